"""Maps to pixel rows and back (:mod:`hodor.engine.backends.pixel_rows`): rows transposed before
they are flattened where constant weights multiply them, rows reshaped before they are transposed
back into a map; the same values bit for bit.

ONNX Runtime runs the graph before and after the rewrite on fresh random inputs; only data
moves, so the results must be equal exactly. The OpenVINO backend's stages, which run the
rewritten encoder, are checked against the torch network in ``tests/test_openvino_backend.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.pixel_rows import (
    rewrite_head_transposes,
    rewrite_map_views,
    rewrite_pixel_transposes,
)
from tests.graph_rewrites import ort_session, rewrite_errors
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def _outputs(models: tuple[onnx.ModelProto, ...], feeds: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """Each model's outputs on ``feeds`` (ONNX Runtime)."""
    return [ort_session(model).run(None, feeds) for model in models]


def _exact_on_the_export(exported: ExportRun, stage: str, rewrite, count: int) -> None:
    """``rewrite`` changes ``count`` places of the exported ``stage`` and its results not at all."""
    original = onnx.load(str(exported.directory / f"{stage}.onnx"))
    rewritten = onnx.load(str(exported.directory / f"{stage}.onnx"))
    assert rewrite(rewritten) == count, stage
    onnx.checker.check_model(rewritten)
    cases = [(1, 192, 320, 3, 4), (2, 96, 160, 1, 2)]  # (streams, height, width, objects, history)
    assert rewrite_errors(original, rewritten, stage, cases) == [0.0, 0.0], stage


def _rows_model(weights_constant: bool = True, flat_dims: tuple = ("n", 4, "hw")) -> onnx.ModelProto:
    """``x [n, 4, h, w]`` flattened to ``[n, 4, h w]`` and transposed to rows, which a ``MatMul``
    with weights ``[4, 5]`` (an initializer, or a second input) and an ``Add`` of the rows to
    themselves read. ``flat_dims``: the shape declared for the flattened map."""
    inits = [numpy_helper.from_array(np.asarray([0, 4, -1], dtype=np.int64), "flat_shape")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])]
    if weights_constant:
        w = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "w"))
    else:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 5]))
    nodes = [
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Transpose", ["flat"], ["rows"], name="to_rows", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["rows", "w"], ["y"]),
        helper.make_node("Add", ["rows", "rows"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "hw", 5]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", "hw", 4]),
        ],
        inits,
        value_info=[helper.make_tensor_value_info("flat", TensorProto.FLOAT, list(flat_dims))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (1, 4, 7, 1)])
def test_rows_are_the_same_bit_for_bit(shape):
    original, rewritten = _rows_model(), _rows_model()
    assert rewrite_pixel_transposes(rewritten) == 1
    onnx.checker.check_model(rewritten)
    kinds = [n.op_type for n in rewritten.graph.node]
    assert kinds == ["Transpose", "Reshape", "MatMul", "Add"], kinds  # the flattening dropped
    assert [list(a.ints) for a in rewritten.graph.node[0].attribute] == [[0, 2, 3, 1]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want, got = _outputs((original, rewritten), {"x": x})
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_left_alone_without_constant_weights_or_a_known_flattening():
    """Rows no constant-weight product reads, or a reshape not declared as ``[B, C, H W]`` of a
    known channel count: the graph untouched."""
    for model in (_rows_model(weights_constant=False), _rows_model(flat_dims=("n", "c", "hw"))):
        before = model.SerializeToString()
        assert rewrite_pixel_transposes(model) == 0
        assert model.SerializeToString() == before


def test_exported_encoder_computes_the_same(exported):
    """The export's encoder: its pixel rows of ``f8`` (read by every layer's value projection)."""
    _exact_on_the_export(exported, "encoder", rewrite_pixel_transposes, 1)
    for stage in ("backbone", "decoder"):  # no such rows there
        assert rewrite_pixel_transposes(onnx.load(str(exported.directory / f"{stage}.onnx"))) == 0


def _map_model(batch_as_zero: bool = True) -> onnx.ModelProto:
    """Rows ``[n, 15, 4]`` transposed and reshaped to a map ``[n, 4, 3, 5]`` (the batch given as 0
    or as -1 in the target shape), which a ``Relu`` reads."""
    target = [0 if batch_as_zero else -1, 4, 3, 5]
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["rows"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Reshape", ["t", "map_shape"], ["map"]),
            helper.make_node("Relu", ["map"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", 15, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 3, 5])],
        [numpy_helper.from_array(np.asarray(target, dtype=np.int64), "map_shape")],
        value_info=[
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", 4, 15]),
            helper.make_tensor_value_info("map", TensorProto.FLOAT, ["n", 4, 3, 5]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("batch_as_zero", [True, False])
def test_maps_from_rows_are_the_same_bit_for_bit(batch_as_zero):
    original, rewritten = _map_model(batch_as_zero), _map_model(batch_as_zero)
    assert rewrite_map_views(rewritten) == 1
    onnx.checker.check_model(rewritten)
    kinds = [n.op_type for n in rewritten.graph.node]
    assert kinds == ["Gather", "Concat", "Reshape", "Transpose", "Relu"], kinds  # the 3-D one dropped
    assert [list(a.ints) for a in rewritten.graph.node[3].attribute] == [[0, 3, 1, 2]]
    for batch in (1, 3):
        rows = np.random.default_rng(batch).standard_normal((batch, 15, 4)).astype(np.float32)
        (want,), (got,) = _outputs((original, rewritten), {"rows": rows})
        assert want.shape == got.shape == (batch, 4, 3, 5) and np.array_equal(want, got)


def test_exported_decoder_maps_from_rows(exported):
    """The export's decoder: each layer's output made back into a map (five layers)."""
    _exact_on_the_export(exported, "decoder", rewrite_map_views, 5)


def _heads_model(d: int = 4) -> onnx.ModelProto:
    """Keys ``[n, s, 8]`` split into 2 heads of ``d`` (declared) and transposed to ``[n, 2, d, s]``,
    as the attention's product reads them."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["k", "split_shape"], ["split"]),
            helper.make_node("Transpose", ["split"], ["y"], perm=[0, 2, 3, 1]),
        ],
        "g",
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, ["n", "s", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, d, "s"])],
        [numpy_helper.from_array(np.asarray([0, 0, 2, d], dtype=np.int64), "split_shape")],
        value_info=[helper.make_tensor_value_info("split", TensorProto.FLOAT, ["n", "s", 2, d])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_keys_into_heads_are_the_same_bit_for_bit():
    original, rewritten = _heads_model(), _heads_model()
    assert rewrite_head_transposes(rewritten) == 1
    onnx.checker.check_model(rewritten)
    kinds = [n.op_type for n in rewritten.graph.node]
    assert kinds == ["Reshape", "Transpose", "Reshape"], kinds  # the split dropped
    assert [list(a.ints) for a in rewritten.graph.node[1].attribute] == [[0, 3, 1, 2]]
    for n, s in ((1, 7), (3, 2)):
        k = np.random.default_rng(n).standard_normal((n, s, 8)).astype(np.float32)
        (want,), (got,) = _outputs((original, rewritten), {"k": k})
        assert want.shape == got.shape == (n, 2, 4, s) and np.array_equal(want, got)
    # heads that do not make up the channels (a declared shape that disagrees): left alone
    wrong = _heads_model(d=3)
    before = wrong.SerializeToString()
    assert rewrite_head_transposes(wrong) == 0 and wrong.SerializeToString() == before


def test_exported_attention_keys_into_heads(exported):
    """The export's encoder (each layer's self- and cross-attention keys) and decoder (each
    layer's descriptor keys): the same results."""
    for stage, count in (("encoder", 10), ("decoder", 5)):
        _exact_on_the_export(exported, stage, rewrite_head_transposes, count)
