"""A map's pixels as rows, transposed before they are flattened (for OpenVINO).

The model turns a feature map ``x [B, C, H, W]`` into rows of pixels ``[B, H W, C]`` as
``x.flatten(2).transpose(1, 2)``: the exporter writes a ``Reshape`` to ``[B, C, H W]`` and a
``Transpose`` (perm 0, 2, 1). Where those rows are multiplied by constant weights (the encoder's
five value projections read the same rows of ``f8``), OpenVINO folds the ``Transpose`` into each
``MatMul`` and its CPU plugin then transposes the map again for every one of them: five copies
of the same transposition, about 1 ms each in a bf16 encoder call at 480p.

:func:`rewrite_pixel_transposes` writes such a pair as ``Transpose`` (perm 0, 2, 3, 1) and then
``Reshape`` to ``[B, H W, C]``: the same values, moved once, and no ``Transpose`` left next to the
products for OpenVINO to fold. The encoder at 480p: bf16 34.1 against 36.9 ms, fp32 64.2
against 68.5 (``benchmarks/RESULTS.md``); the results are bit for bit the same (only data
movement changes).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hodor.engine.backends.onnx_edit import replace_nodes


def _dims(graph: onnx.GraphProto) -> dict[str, list[int | str]]:
    """The shapes the graph declares (inputs, outputs, value infos): each dimension its value or
    its symbol ("" when neither)."""
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value or d.dim_param for d in info.type.tensor_type.shape.dim]
    return shapes


def _is_flatten(x: list | None, y: list | None) -> bool:
    """Whether a ``Reshape`` of ``x`` to ``y`` is a flattening of the last two axes of a 4-D map
    with a known channel count: ``[B, C, H, W]`` to ``[B, C, H W]``."""
    if x is None or y is None or len(x) != 4 or len(y) != 3:
        return False
    return x[0] != "" and x[0] == y[0] and isinstance(x[1], int) and x[1] > 0 and x[1] == y[1]


def rewrite_pixel_transposes(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each ``Reshape`` + ``Transpose`` turning a map into rows of pixels that
    a ``MatMul`` with a constant second input reads (see the module's text); returns how many."""
    graph = model.graph
    shapes = _dims(graph)
    constants = {init.name for init in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    added: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "Transpose":
            continue
        perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
        flat = producer.get(node.input[0])
        if perm != [[0, 2, 1]] or flat is None or flat.op_type != "Reshape":
            continue
        x = flat.input[0]
        if not _is_flatten(shapes.get(x), shapes.get(flat.output[0])):
            continue
        if not any(
            r.op_type == "MatMul" and r.input[1] in constants for r in readers.get(node.output[0], [])
        ):
            continue
        name = node.name or node.output[0]
        shape = f"{name}/rows_shape"
        added.append(numpy_helper.from_array(np.asarray([0, -1, shapes[x][1]], dtype=np.int64), shape))
        replaced[id(node)] = [
            helper.make_node(
                "Transpose", [x], [f"{name}/channels_last"], name=f"{name}/channels_last", perm=[0, 2, 3, 1]
            ),
            helper.make_node(
                "Reshape", [f"{name}/channels_last", shape], list(node.output), name=f"{name}/rows"
            ),
        ]
    if not replaced:
        return 0
    # A flattening read by the replaced Transpose alone is left with no reader: dropped.
    unread = {
        id(producer[node.input[0]])
        for node in graph.node
        if id(node) in replaced and len(readers[node.input[0]]) == 1
    }
    nodes = [new for node in graph.node if id(node) not in unread for new in replaced.get(id(node), [node])]
    replace_nodes(graph, nodes, added)
    return len(replaced)
