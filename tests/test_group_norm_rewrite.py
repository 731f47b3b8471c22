"""Group normalisations' chained means merged (:mod:`hodor.engine.backends.group_norm`): the same
function as the graph as exported, one ``ReduceMean`` per mean, and only where it applies.

ONNX Runtime runs the graph before and after the rewrite on fresh random inputs; fp32 results
within 1e-5 relative (``max |a - b| / max |b|``: only the order of the sums changes) on small
maps, 2e-4 on the exported decoder's (a merged mean sums a group's whole map in one float32 pass
where the exported chain summed one axis at a time; 5e-5 seen). The backend applies the
rewrite to bf16 stages only, whose limit is 5e-2. That the
OpenVINO backend's bf16 stages, which run the rewritten graphs, stay within their limit is
checked in ``tests/test_openvino_backend.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.group_norm import rewrite_group_norms
from tests.graph_rewrites import ort_session, rewrite_errors
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5
STAGE_TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def _group_norm_model(also_read: bool = False, axes: tuple = (4, 3, 2)) -> onnx.ModelProto:
    """A group normalisation of ``x [N, G, C/G, H, W]`` (the map already reshaped to its groups) as
    the exporter writes it: each mean one ``ReduceMean`` per axis, in the order ``axes``.
    ``also_read``: the first partial mean is a second output of the graph as well."""
    inits = [numpy_helper.from_array(np.asarray(1e-5, dtype=np.float32), "eps")]
    nodes = []
    for name in ("mean", "var"):
        source = "x" if name == "mean" else "sq"
        for k, axis in enumerate(axes):
            inits.append(numpy_helper.from_array(np.asarray([axis], dtype=np.int64), f"{name}_axis{k}"))
            read = source if k == 0 else f"{name}{k - 1}"
            out = name if k == len(axes) - 1 else f"{name}{k}"
            nodes.append(helper.make_node("ReduceMean", [read, f"{name}_axis{k}"], [out], keepdims=1))
        if name == "mean":
            nodes += [
                helper.make_node("Sub", ["x", "mean"], ["d"]),
                helper.make_node("Mul", ["d", "d"], ["sq"]),
            ]
    nodes += [
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["y"]),
    ]
    dims = ["n", 4, 2, "h", "w"]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)]
    if also_read:
        outputs.append(helper.make_tensor_value_info("mean0", TensorProto.FLOAT, ["n", 4, 2, "h", 1]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _means(model: onnx.ModelProto) -> list[list[int]]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[1]].tolist() for n in model.graph.node if n.op_type == "ReduceMean"]


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort_session(model).run(None, {"x": x})


@pytest.mark.parametrize("shape", [(2, 4, 2, 5, 7), (1, 4, 2, 16, 3)])
def test_chains_become_one_mean_each(shape):
    original = _group_norm_model()
    rewritten = _group_norm_model()
    assert rewrite_group_norms(rewritten) == 4  # two of three reductions per mean folded away
    onnx.checker.check_model(rewritten)
    assert _means(rewritten) == [[2, 3, 4], [2, 3, 4]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3 + 1
    (want,), (got,) = _run(original, x), _run(rewritten, x)
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= TOLERANCE
    # A normalisation indeed: each group of the output has mean 0 and variance 1.
    grouped = got.reshape(shape[0], shape[1], -1)
    assert np.allclose(grouped.mean(-1), 0, atol=1e-5) and np.allclose(grouped.var(-1), 1, atol=1e-3)


def test_partial_means_read_elsewhere_are_kept():
    """A partial mean something else reads stays: only the reductions after it merge."""
    model = _group_norm_model(also_read=True)
    assert rewrite_group_norms(model) == 3
    assert _means(model) == [[4], [2, 3], [2, 3, 4]]
    x = np.random.default_rng(1).standard_normal((1, 4, 2, 6, 4)).astype(np.float32)
    want, got = _run(_group_norm_model(also_read=True), x), _run(model, x)
    for a, b in zip(want, got, strict=True):
        assert float(np.abs(a - b).max() / np.abs(a).max()) <= TOLERANCE


def test_graphs_without_chains_are_left_alone():
    """Overlapping axes (a mean of a mean over the same axis) or single reductions: untouched."""
    model = _group_norm_model(axes=(3, 3))
    before = model.SerializeToString()
    assert rewrite_group_norms(model) == 0
    assert model.SerializeToString() == before
    single = _group_norm_model(axes=(2,))
    before = single.SerializeToString()
    assert rewrite_group_norms(single) == 0
    assert single.SerializeToString() == before


def test_exported_decoder_computes_the_same(exported):
    """The export's decoder: each of its group normalisations' means (two chains of three each)
    becomes one reduction, the stage's results the same."""
    original = onnx.load(str(exported.directory / "decoder.onnx"))
    rewritten = onnx.load(str(exported.directory / "decoder.onnx"))
    chained = sum(
        1
        for n in original.graph.node
        if n.op_type == "ReduceMean"
        and any(n.input[0] in p.output for p in original.graph.node if p.op_type == "ReduceMean")
    )
    assert chained > 0
    assert rewrite_group_norms(rewritten) == chained
    onnx.checker.check_model(rewritten)
    producers = {o: n.op_type for n in rewritten.graph.node for o in n.output}
    assert not [
        n
        for n in rewritten.graph.node
        if n.op_type == "ReduceMean" and producers.get(n.input[0]) == "ReduceMean"
    ]
    cases = [(1, 192, 320, 3, 4), (2, 96, 160, 1, 2)]  # (streams, height, width, objects, history)
    errors = rewrite_errors(original, rewritten, "decoder", cases)
    assert max(errors) <= STAGE_TOLERANCE, errors
