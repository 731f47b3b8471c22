"""Group normalisations of an exported graph put in the form OpenVINO fuses (for OpenVINO bf16 stages).

The exporter writes ``GroupNorm`` as its arithmetic: the map reshaped to ``[N, G, C/G, H, W]``,
the mean taken one axis at a time (three ``ReduceMean`` nodes, axes 4, 3, 2), subtracted,
squared, averaged again one axis at a time, ``Add`` epsilon, ``Sqrt``, ``Div``. OpenVINO's CPU
plugin fuses such a normalisation into its one-pass ``MVN`` kernel only when each mean is one
``ReduceMean`` over all its axes; in the exported form it runs every piece on its own, in fp32,
over the full map.

:func:`rewrite_group_norms` merges each chain of ``ReduceMean`` nodes (each keeping its reduced
axes, each one's result read by the next alone) into one over the union of their axes: the same
mean in real numbers, summed in another order. OpenVINO then runs the decoder's eight group
normalisations and the backbone's two as ``MVN``: at 480p the bf16 decoder 255 against 265 ms,
the backbone 311 against 313 (``benchmarks/RESULTS.md``). The backend applies it to bf16 stages
only: a merged mean sums a group's whole map (up to hundreds of thousands of values) in one
float32 pass where the chain summed one axis (at most a row) at a time, and in fp32 the
decoder's logits moved from PyTorch's by 1.3e-4 (relative) instead of 5e-6 (ONNX Runtime, the
rewritten graph against the exported one: 5e-5); in bf16 they came a little closer (1.74e-2
against 1.83e-2).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hodor.engine.backends.onnx_edit import replace_nodes


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The graph's small int64 constants by name (initializers and ``Constant`` nodes): where
    reduction axes come from."""
    values = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.data_type == onnx.TensorProto.INT64 and int(np.prod(init.dims)) <= 8
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            if tensor.data_type == onnx.TensorProto.INT64 and int(np.prod(tensor.dims)) <= 8:
                values[node.output[0]] = numpy_helper.to_array(tensor)
    return values


def _axes(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[int] | None:
    """A ``ReduceMean``'s constant, non-negative axes (opset 18 and later: its second input), when
    it keeps the reduced axes; else None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("keepdims", 1) != 1 or len(node.input) < 2 or node.input[1] not in constants:
        return None
    axes = constants[node.input[1]].reshape(-1)
    if axes.size == 0 or (axes < 0).any():
        return None
    return [int(a) for a in axes]


def rewrite_group_norms(model: onnx.ModelProto) -> int:
    """Merge, in place, the chains of ``ReduceMean`` nodes of ``model`` (see the module's text);
    returns how many reductions were merged away (0: the graph is untouched)."""
    graph = model.graph
    constants = _constant_values(graph)
    readers = Counter(name for node in graph.node for name in node.input)
    readers.update(out.name for out in graph.output)
    producer = {out: node for node in graph.node for out in node.output}
    merged: dict[str, tuple[str, list[int]]] = {}  # a reduction's output -> (its input, axes) merged
    folded: set[str] = set()  # outputs of reductions a later one now computes through
    for node in graph.node:  # in order: a chain's first reduction comes before the next
        if node.op_type != "ReduceMean" or (axes := _axes(node, constants)) is None:
            continue
        first = node.input[0]
        if first in merged:
            source = merged[first]
        elif (p := producer.get(first)) is not None and p.op_type == "ReduceMean":
            if (p_axes := _axes(p, constants)) is None:
                continue
            source = (p.input[0], p_axes)
        else:
            continue
        if readers[first] != 1 or set(axes) & set(source[1]):
            continue
        merged[node.output[0]] = (source[0], sorted(source[1] + axes))
        folded.add(first)
    if not folded:
        return 0
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        out = node.output[0] if node.output else None
        if out in folded:
            continue
        if out in merged:
            source, axes = merged[out]
            axes_name = f"{node.name or out}/axes"
            added.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), axes_name))
            node = helper.make_node("ReduceMean", [source, axes_name], [out], name=node.name, keepdims=1)
        nodes.append(node)
    replace_nodes(graph, nodes, added)
    return len(folded)
