"""Pixel rows transposed before they are flattened (:mod:`hodor.engine.backends.pixel_rows`): the
same values bit for bit, and only where constant weights multiply the rows.

ONNX Runtime runs the graph before and after the rewrite on fresh random inputs; only data
moves, so the results must be equal exactly. The OpenVINO backend's stages, which run the
rewritten encoder, are checked against the torch network in ``tests/test_openvino_backend.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.pixel_rows import rewrite_pixel_transposes
from tests.graph_rewrites import ort_session, rewrite_errors
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


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
    want, got = ort_session(original).run(None, {"x": x}), ort_session(rewritten).run(None, {"x": x})
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
    original = onnx.load(str(exported.directory / "encoder.onnx"))
    rewritten = onnx.load(str(exported.directory / "encoder.onnx"))
    assert rewrite_pixel_transposes(rewritten) == 1
    onnx.checker.check_model(rewritten)
    cases = [(1, 192, 320, 3, 4), (2, 96, 160, 1, 2)]  # (streams, height, width, objects, history)
    assert rewrite_errors(original, rewritten, "encoder", cases) == [0.0, 0.0]
    for stage in ("backbone", "decoder"):  # no such rows there
        assert rewrite_pixel_transposes(onnx.load(str(exported.directory / f"{stage}.onnx"))) == 0
