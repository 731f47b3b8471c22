"""The bf16 decoder's deformable convolutions as sampled columns and a bf16 product on OpenVINO
(:mod:`hodor.engine.backends.deform_columns`), and the build of the engine's OpenVINO operations
(:mod:`hodor.engine.backends.openvino_ops`).

The columns operation is built here with the machine's C++ compiler (as the backend builds it on
first use). Its sampling is checked exactly in its fp32 mode against the model's deformable
convolution in float64 (within 1e-5 relative, ``max |a - b| / max |b|``: only the order of the
sums differs), with offsets large enough to sample outside the map; the rewritten graph in bf16
within 2e-2 (one bf16 product; the whole decoder's bf16 limit is 5e-2, checked by the backend's
tests). Random inputs at sizes no graph was traced at.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino", reason="the columns operation runs in OpenVINO")

import openvino  # noqa: E402

from hodor.engine import native_library  # noqa: E402
from hodor.engine.backends.deform_columns import OP_TYPE, rewrite_as_columns  # noqa: E402
from hodor.engine.backends.openvino_backend import OpenVinoBackend, cpu_supports_bf16  # noqa: E402
from hodor.engine.backends.openvino_ops import OP_DOMAIN, ExtensionUnavailable, extension_library  # noqa: E402
from hodor.model.deform_conv import deform_conv2d  # noqa: E402
from tests.test_export_shared import ExportRun, shared_export, shared_network  # noqa: E402

needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(openvino.Core()), reason="this CPU has neither AVX-512 BF16 nor AMX"
)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _case(seed: int, channels: int = 32, height: int = 11, width: int = 17, k: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, height, width, generator=gen)
    # a few pixels, some far outside the map
    offsets = 3 * torch.randn(2, 2 * k * k, height, width, generator=gen)
    offsets[:, :, :2] *= 6
    weight = torch.randn(channels + 8, channels, k, k, generator=gen) / (channels * k)
    bias = torch.randn(channels + 8, generator=gen)
    want = deform_conv2d(x.double(), offsets.double(), weight.double(), bias.double()).numpy()
    return x.numpy(), offsets.numpy(), weight.numpy(), bias.numpy(), want


def _deform_conv_model(weight: np.ndarray, bias: np.ndarray, **attrs) -> onnx.ModelProto:
    k = weight.shape[2]
    attrs = {"kernel_shape": [k, k], "pads": [k // 2] * 4, **attrs}
    node = helper.make_node("DeformConv", ["x", "w", "offsets", "b"], ["y"], name="dc", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list("nchw")) for n in ("x", "offsets")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _run(model: onnx.ModelProto, library: str, precision: str, feeds: dict) -> np.ndarray:
    core = openvino.Core()
    core.add_extension(library)
    compiled = core.compile_model(
        core.read_model(model.SerializeToString(), b""), "CPU", {"INFERENCE_PRECISION_HINT": precision}
    )
    return compiled.create_infer_request().infer(feeds)[0]


def test_the_sampling_is_the_models_deformable_convolution(openvino_ops_library):
    """The operation in fp32 (bf16=0) times the weights, in float64: the model's function."""
    for seed, k in ((0, 3), (1, 5)):
        x, offsets, weight, bias, want = _case(seed, k=k)
        node = helper.make_node(
            OP_TYPE, ["x", "offsets"], ["cols"], domain=OP_DOMAIN, kernel=k, pad=k // 2, bf16=0
        )
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list("nchw")) for n in ("x", "offsets")],
            [helper.make_tensor_value_info("cols", TensorProto.FLOAT, None)],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(OP_DOMAIN, 1)]
        )
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        cols = _run(model, openvino_ops_library, "f32", {"x": nhwc, "offsets": offsets}).astype(np.float64)
        n, h, w, c = nhwc.shape
        assert cols.shape == (n, h, w, k * k * c)
        matrix = weight.astype(np.float64).transpose(2, 3, 1, 0).reshape(k * k * c, -1)
        got = (cols.reshape(n, h * w, -1) @ matrix + bias).reshape(n, h, w, -1).transpose(0, 3, 1, 2)
        assert _relative(got, want) <= 1e-5, (k, _relative(got, want))


@needs_bf16
def test_the_rewritten_node_in_bf16(openvino_ops_library):
    x, offsets, weight, bias, want = _case(2)
    model = _deform_conv_model(weight, bias)
    assert rewrite_as_columns(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert OP_TYPE in ops and "DeformConv" not in ops and "MatMul" in ops
    assert {i.name for i in model.graph.initializer}.isdisjoint({"w", "b"})  # the old weights are dropped
    got = _run(model, openvino_ops_library, "bf16", {"x": x, "offsets": offsets})
    error = _relative(got, want)
    assert 1e-5 < error <= 2e-2, error  # bf16 really is in use, and within its limit


@needs_bf16
def test_a_map_made_from_pixel_rows_is_read_as_rows(openvino_ops_library):
    """Where the map is pixel rows ``[B, H W, C]`` transposed and reshaped to ``[B, C, H, W]`` (a
    decoder layer's output), the columns read the rows reshaped, with no transposition back; the
    same result as from the map."""
    x, offsets, weight, bias, want = _case(4)
    n, c, h, w = x.shape
    model = _deform_conv_model(weight, bias)
    graph = model.graph
    graph.input[0].CopyFrom(helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", "s", c]))
    graph.initializer.append(numpy_helper.from_array(np.array([0, c, h, w], np.int64), "map_shape"))
    graph.node.insert(0, helper.make_node("Transpose", ["rows"], ["t"], perm=[0, 2, 1]))
    graph.node.insert(1, helper.make_node("Reshape", ["t", "map_shape"], ["x"]))
    graph.value_info.extend(
        [
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", c, "s"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, h, w]),
        ]
    )
    assert rewrite_as_columns(model) == 1
    columns = next(node for node in model.graph.node if node.op_type == OP_TYPE)
    producers = {out: node for node in model.graph.node for out in node.output}
    cast = producers[columns.input[0]]
    assert cast.op_type == "Cast" and producers[cast.input[0]].op_type == "Reshape"
    assert producers[cast.input[0]].input[0] == "rows"
    rows = np.ascontiguousarray(x.reshape(n, c, h * w).transpose(0, 2, 1))
    got = _run(model, openvino_ops_library, "bf16", {"rows": rows, "offsets": offsets})
    assert 1e-5 < _relative(got, want) <= 2e-2, _relative(got, want)


def test_other_deformable_convolutions_are_left_alone():
    _, _, weight, bias, _ = _case(3)
    for attrs in ({"strides": [2, 2]}, {"group": 2}, {"dilations": [2, 2]}, {"pads": [0, 0, 0, 0]}):
        model = _deform_conv_model(weight, bias, **attrs)
        before = model.SerializeToString()
        assert rewrite_as_columns(model) == 0, attrs
        assert model.SerializeToString() == before
    masked = _deform_conv_model(weight, bias)
    masked.graph.node[0].input.append("mask")
    assert rewrite_as_columns(masked) == 0


def test_the_library_is_built_once_and_kept(tmp_path, monkeypatch, capsys):
    version = native_library.compiler_version(native_library.compiler())
    first = extension_library(tmp_path)
    assert "building the OpenVINO operations for this machine" in capsys.readouterr().err  # said once
    built = first.stat().st_mtime
    os.utime(first, (built - 86400, built - 86400))
    monkeypatch.setattr(native_library, "compiler_version", lambda compiler: version)
    monkeypatch.setattr(native_library.subprocess, "run", _compiler_must_not_run)
    assert extension_library(tmp_path) == first  # found, not built again
    assert capsys.readouterr().err == ""
    assert first.stat().st_mtime > time.time() - 60  # marked as used
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # nothing half-written left


def _compiler_must_not_run(*args, **kwargs):
    raise AssertionError("the compiler ran again")


def test_a_failing_build_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    broken = tmp_path / "c++"
    broken.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo broken 1.0; exit 0; fi\necho "no good" >&2\nexit 1\n'
    )
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    cache = tmp_path / "cache"
    with pytest.raises(ExtensionUnavailable, match="failed to build openvino_ops.cpp: no good"):
        extension_library(cache)
    assert not any(cache.iterdir())
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CXX", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ExtensionUnavailable, match="no C\\+\\+ compiler"):
        extension_library(cache)


# --------------------------------------------------------------------------- in the backend


@pytest.fixture(scope="module")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


@needs_bf16
def test_the_bf16_backend_uses_it_and_falls_back_without_it(
    exported, parity_checkpoint, tmp_path, monkeypatch
):
    from tests.test_openvino_backend import BF16_TOLERANCE, _chained_inputs, _errors

    net = shared_network(parity_checkpoint)
    columns = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path / "a")
    assert columns.deform_columns_convs == columns.deform_convs_rewritten > 0
    assert columns.ops_unavailable is None
    assert columns.winograd_ops_convs == 4  # the FPN's and the decoder's dense 3x3 convolutions
    fused = OpenVinoBackend(
        exported.directory, precision="bf16", cache_dir=tmp_path / "a", deform_columns=False
    )
    assert fused.deform_columns_convs == 0 and fused.deform_convs_rewritten == columns.deform_convs_rewritten
    assert fused.winograd_ops_convs == 4
    inputs = _chained_inputs(net, 7, 256, 448)
    with_columns, without = _errors(columns, net, inputs), _errors(fused, net, inputs)
    assert max(with_columns.values()) <= BF16_TOLERANCE, with_columns
    assert with_columns["decoder[0]"] != without["decoder[0]"]  # not the same computation
    # A warm start reads the kept graph, and registers the operation before compiling it.
    again = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path / "a")
    assert again.deform_columns_convs == columns.deform_columns_convs
    assert again.winograd_ops_convs == columns.winograd_ops_convs
    assert _errors(again, net, inputs) == with_columns
    # A damaged library in the cache is built again (another cache: never overwrite a loaded library).
    built = extension_library()  # the one this backend loaded: found, not built
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "damaged-cache"))
    library = tmp_path / "damaged-cache" / "hodor-engine" / "openvino-ext" / built.name
    library.parent.mkdir(parents=True)
    library.write_bytes(b"not a shared library")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path / "a")
    assert rebuilt.deform_columns_convs == columns.deform_columns_convs
    assert library.read_bytes().startswith(b"\x7fELF")
    # No compiler: OpenVINO's fp32 deformable convolution, with a warning saying why.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*keep OpenVINO's fp32 kernel"):
        plain = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path / "b")
    assert plain.deform_columns_convs == plain.winograd_ops_convs == 0
    assert plain.stage_precisions["decoder"] == "bf16"
    assert "no C++ compiler" in plain.ops_unavailable
    # fp32: its Winograd convolutions in graph operations, with a warning saying so.
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*Winograd in plain graph operations"):
        fp32 = OpenVinoBackend(exported.directory, cache_dir=tmp_path / "c")
    assert fp32.winograd_convs == 4 and fp32.winograd_ops_convs == 0
