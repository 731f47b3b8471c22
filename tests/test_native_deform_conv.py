"""The decoder graph's deformable convolutions rewritten as ``DeformConv`` nodes
(:mod:`hodor.engine.backends.native_deform_conv`): the same function as the graph as exported.

ONNX Runtime runs both (it implements ``DeformConv``), on fresh random inputs at sizes the graph
was not traced at, with offsets large enough to sample outside the map; fp32 results within 1e-5
relative (``max |a - b| / max |b|``; the order of the sums differs). OpenVINO's conversion of the
node is checked by the OpenVINO backend's tests.
"""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.native_deform_conv import UnexpectedGraph, rewrite_deform_convs
from tests.graph_rewrites import rewrite_errors
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def test_rewritten_decoder_computes_the_exported_one(exported):
    original = onnx.load(str(exported.directory / "decoder.onnx"))
    samples = sum(n.op_type == "GridSample" for n in original.graph.node)
    rewritten = onnx.load(str(exported.directory / "decoder.onnx"))
    assert rewrite_deform_convs(rewritten) == samples > 0
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("DeformConv") == samples and "GridSample" not in ops
    assert len(rewritten.graph.node) < len(original.graph.node)  # the positions' arithmetic is gone
    onnx.checker.check_model(rewritten, full_check=True)

    cases = [(1, 192, 320, 3, 4), (2, 128, 96, 1, 2)]  # (streams, height, width, objects, history)

    def large_offsets(feeds):
        feeds["f8"] = feeds["f8"] * 8  # samples far outside the map too

    errors = rewrite_errors(original, rewritten, "decoder", cases, large_offsets)
    assert max(errors) <= 1e-5, errors


def _graph(nodes, inputs, initializers):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_a_graph_of_another_shape_is_left_alone():
    """A GridSample that does not feed the exporter's product-and-bias: refused, model untouched."""
    model = _graph(
        [helper.make_node("GridSample", ["x", "grid"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        ["x", "grid"],
        {},
    )
    before = model.SerializeToString()
    with pytest.raises(UnexpectedGraph, match="not one Reshape"):
        rewrite_deform_convs(model)
    assert model.SerializeToString() == before
    no_sampling = _graph([helper.make_node("Relu", ["x"], ["y"])], ["x"], {})
    assert rewrite_deform_convs(no_sampling) == 0
