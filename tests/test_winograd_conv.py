"""Dense 3x3 convolutions rewritten as Winograd F(4x4, 3x3) (:mod:`hodor.engine.backends.winograd_conv`):
the same function as the graph as exported, and only where it applies.

ONNX Runtime runs the graph before and after the rewrite on fresh random inputs, at sizes that
are not multiples of the 4x4 output tile and that the graphs were not traced at; fp32 results
within 2e-5 relative (``max |a - b| / max |b|``: the transforms scale values by up to 100 and
back, so the rounding is a few times a direct convolution's). The OpenVINO backend, which runs
the rewritten stages, is checked against the torch network in ``tests/test_openvino_backend.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.winograd_conv import MIN_CHANNELS, rewrite_winograd_convs, transformed_weights_for
from tests.bench_scripts import load_bench_script
from tests.graph_rewrites import ort_session, rewrite_errors
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip("onnxruntime")

TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def _error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _conv_model(
    out_ch: int, in_ch: int, bias: bool, seed: int = 0, trained_scale: bool = False, **attrs
) -> onnx.ModelProto:
    """``y = Relu(Conv(x))``, the weights (and bias) initializers; ``trained_scale``: the weights
    scaled as a trained layer's would be (``sqrt(2 / fan-in)``), the bias by 0.1."""
    rng = np.random.default_rng(seed)
    kernel = attrs.pop("kernel", 3)
    group = attrs.get("group", 1)
    weight = rng.standard_normal((out_ch, in_ch // group, kernel, kernel))
    if trained_scale:
        weight = weight * (2 / (in_ch * kernel * kernel)) ** 0.5
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        values = rng.standard_normal(out_ch)
        inits.append(
            numpy_helper.from_array((0.1 * values if trained_scale else values).astype(np.float32), "b")
        )
        inputs.append("b")
    attrs.setdefault("pads", [kernel // 2] * 4)
    nodes = [helper.make_node("Conv", inputs, ["c"], kernel_shape=[kernel, kernel], **attrs)]
    nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", in_ch, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out_ch, "oh", "ow"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("out_ch,in_ch,bias", [(64, 64, True), (96, 64, False), (64, 128, True)])
def test_a_convolution_computes_the_same_at_any_size(out_ch, in_ch, bias):
    model = _conv_model(out_ch, in_ch, bias)
    before = ort_session(model)
    assert rewrite_winograd_convs(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and ops.count("MatMul") == 3  # input transform, product, output transform
    assert {i.name for i in model.graph.initializer}.isdisjoint({"w", "b"})  # read by nothing now
    after = ort_session(model)
    rng = np.random.default_rng(1)
    for n, h, w in [(1, 7, 11), (2, 16, 16), (1, 1, 1), (3, 13, 30), (1, 4, 5)]:
        shape = (n, in_ch, h, w)
        x = rng.standard_normal(shape).astype(np.float32)
        (want,), (got,) = before.run(None, {"x": x}), after.run(None, {"x": x})
        assert got.shape == want.shape
        assert _error(got, want) <= TOLERANCE, (shape, _error(got, want))


OTHER_CONVOLUTIONS = [
    ("stride 2", {"strides": [2, 2]}),
    ("no padding", {"pads": [0, 0, 0, 0]}),
    ("dilated", {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ("grouped", {"group": 2}),
    ("1x1", {"kernel": 1}),
    ("5x5", {"kernel": 5}),
]
"""Convolutions no Winograd rewrite takes (also ``tests/test_winograd_ops.py``)."""


@pytest.mark.parametrize("case,attrs", OTHER_CONVOLUTIONS)
def test_other_convolutions_are_left_alone(case, attrs):
    model = _conv_model(64, 64, True, **attrs)
    before = model.SerializeToString()
    assert rewrite_winograd_convs(model) == 0, case
    assert model.SerializeToString() == before


def test_narrow_convolutions_and_computed_weights_are_left_alone():
    narrow = _conv_model(MIN_CHANNELS // 2, 256, True)  # the decoder's offsets: too few outputs to pay
    assert rewrite_winograd_convs(narrow) == 0
    assert rewrite_winograd_convs(_conv_model(18, 256, True), min_channels=8) == 1
    computed = _conv_model(64, 64, False)
    computed.graph.node.insert(0, helper.make_node("Identity", ["w"], ["w2"]))
    computed.graph.node[1].input[1] = "w2"  # the weight is not an initializer itself
    assert rewrite_winograd_convs(computed) == 0


def test_weight_transform_is_g_g_gt():
    """Each (C, K) kernel's 6x6 transform, against the definition written out for one entry."""
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((5, 3, 3, 3))
    u = transformed_weights_for(weight, 4).reshape(6, 6, 3, 5)
    g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])  # fmt: skip
    assert np.allclose(u[:, :, 2, 4], g @ weight[4, 2] @ g.T, rtol=1e-6, atol=1e-6)
    assert u.dtype == np.float32


@pytest.mark.parametrize("stage", ["backbone", "decoder"])
def test_exported_stages_compute_the_same(exported, stage):
    """The export's backbone and decoder: their 256-channel 3x3 convolutions replaced (the
    FPN's two; the decoder's 1/4-map and catch-all ones, not its 18-channel offset ones)."""
    original = onnx.load(str(exported.directory / f"{stage}.onnx"))
    rewritten = onnx.load(str(exported.directory / f"{stage}.onnx"))
    assert rewrite_winograd_convs(rewritten) == 2
    onnx.checker.check_model(rewritten)
    left = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    kernels = {
        i.name: tuple(i.dims) for i in rewritten.graph.initializer if i.name in {n.input[1] for n in left}
    }
    assert not [k for k in kernels.values() if k[2:] == (3, 3) and min(k[:2]) >= MIN_CHANNELS]
    cases = [(1, 192, 320, 3, 4), (2, 96, 160, 1, 2)]  # (streams, height, width, objects, history)
    errors = rewrite_errors(original, rewritten, stage, cases)
    assert max(errors) <= TOLERANCE, errors


def test_benchmark_computes_the_same_function(monkeypatch):
    """``benchmarks/cpu_winograd.py`` at a tiny size: every engine's every way is the convolution
    (fp32 to fp32 accuracy; OpenVINO's bf16 hint to bf16's), the engine's operations' ways run where
    OpenVINO is, and the tables list every way."""
    module = load_bench_script("cpu_winograd", monkeypatch)
    rows = module.compare(64, 1, lambda msg: None)
    engines = {"onnxruntime fp32"}
    if importlib.util.find_spec("openvino") is not None:
        engines.add("openvino fp32")
    assert engines <= {r.engine for r in rows}
    assert len({r.conv.name for r in rows}) == 5
    for r in rows:
        ops = {w for w, (engine, _) in module.OPS_WAYS.items() if engine == r.engine}
        want = set(module.GRAPH_WAYS) | ops
        assert set(r.ms) == set(r.error) == want, (r.engine, r.ms)
        limit = 1e-1 if r.engine.endswith("bf16") else TOLERANCE
        assert all(e <= limit for e in r.error.values()), (r.conv.name, r.engine, r.error)
        assert all(len(t) == 1 for t in r.ms.values())
    lines = module.report(rows, 64, 1)
    ways = sum(len(r.ms) for r in rows if r.conv.name == "backbone FPN 1/4")
    assert sum(line.startswith("| backbone FPN 1/4 ") for line in lines) == ways
    assert any(line.startswith("| onnxruntime fp32 | graph F(4x4) |") for line in lines)
