"""Maps turned into pixel rows and back, written with the transpositions OpenVINO runs fastest.

The model turns a feature map ``x [B, C, H, W]`` into rows of pixels ``[B, H W, C]`` as
``x.flatten(2).transpose(1, 2)``, and rows back into a map as
``rows.transpose(1, 2).reshape(b, c, h, w)``: the exporter writes a ``Reshape`` and a 3-D
``Transpose`` (perm 0, 2, 1) each way. The rewrites here change only how the values move (the
results are bit for bit the same) and apply where the graph declares the channel count:

- :func:`rewrite_pixel_transposes`: where constant weights multiply the rows (the encoder's five
  value projections read the same rows of ``f8``), OpenVINO folded the ``Transpose`` into each
  ``MatMul`` and its CPU plugin then transposed the map again for every one of them (about 1 ms
  each in a bf16 encoder call at 480p). Written as ``Transpose`` (perm 0, 2, 3, 1) and then
  ``Reshape``, the rows move once: the encoder bf16 34.1 against 36.9 ms, fp32 64.2 against 68.5.
- :func:`rewrite_map_views`: rows made back into a map (a decoder layer's output), written as
  ``Reshape`` to ``[B, H, W, C]`` and a 4-D ``Transpose`` (perm 0, 3, 1, 2), which OpenVINO's CPU
  plugin runs with a compiled kernel where it ran the 3-D one with a generic one (0.3-0.45
  against 1.0-1.2 ms a layer in a bf16 decoder call): bf16 decoder 239.7 against 244.4 ms; fp32
  unchanged (416.0 against 415.5).
- :func:`rewrite_head_transposes`: keys split into heads and transposed for the attention's
  product (``[B, S, h, d]`` to ``[B, h, d, S]``, the encoder's ten, the decoder's five), which
  OpenVINO also moved generically, written as the 4-D channels-last-to-first transposition of
  ``[B, S, 1, C]`` and a reshape: the encoder bf16 34.9 against 38.9 ms, fp32 58.4 against 69.4.

:func:`rows_behind` finds the maps made from rows, which the bf16 decoder's deformable
convolutions read as rows (:mod:`hodor.engine.backends.deform_columns`). Figures: interleaved
stage calls at 480p, ``benchmarks/RESULTS.md``.
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


def _perm(node: onnx.NodeProto) -> list[int] | None:
    """A ``Transpose`` node's permutation (None for any other node, or one without it)."""
    if node.op_type != "Transpose":
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _is_flatten(x: list | None, y: list | None) -> bool:
    """Whether a ``Reshape`` of ``x`` to ``y`` is a flattening of the last two axes of a 4-D map
    with a known channel count: ``[B, C, H, W]`` to ``[B, C, H W]``."""
    if x is None or y is None or len(x) != 4 or len(y) != 3:
        return False
    return x[0] != "" and x[0] == y[0] and isinstance(x[1], int) and x[1] > 0 and x[1] == y[1]


def _replace(graph: onnx.GraphProto, replaced: dict[str, list[onnx.NodeProto]], added: list) -> int:
    """Put each node's replacement (``replaced``, by the node's first output) in its place and add
    ``added``; a node bypassed by the replacements (its output, the first input of a replaced node,
    read by no node left and no graph output) is dropped. Returns how many nodes were replaced."""
    read = {name for node in graph.node if node.output[0] not in replaced for name in node.input}
    read |= {name for nodes in replaced.values() for node in nodes for name in node.input}
    read |= {out.name for out in graph.output}
    bypassed = {
        node.input[0] for node in graph.node if node.output[0] in replaced and node.input[0] not in read
    }
    nodes = [
        new
        for node in graph.node
        if node.output[0] not in bypassed
        for new in replaced.get(node.output[0], [node])
    ]
    replace_nodes(graph, nodes, added)
    return len(replaced)


def rows_behind(graph: onnx.GraphProto) -> dict[str, str]:
    """Maps ``[B, C, H, W]`` that are rows of pixels ``[B, H W, C]`` transposed and reshaped (a
    decoder layer's output, ``pixels.transpose(1, 2).reshape(b, c, h, w)``), by name: the rows'
    name. The shapes are the graph's declared ones; C must be a number and the same in both."""
    shapes = _dims(graph)
    producer = {out: node for node in graph.node for out in node.output}
    rows = {}
    for node in graph.node:
        t = producer.get(node.input[0])
        if node.op_type != "Reshape" or t is None or _perm(t) != [0, 2, 1]:
            continue
        source, view = shapes.get(t.input[0]), shapes.get(node.output[0])
        if source is None or view is None or len(source) != 3 or len(view) != 4:
            continue
        if (
            isinstance(source[2], int)
            and source[2] > 0
            and source[2] == view[1]
            and source[0] == view[0] != ""
        ):
            rows[node.output[0]] = t.input[0]
    return rows


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
    replaced: dict[str, list[onnx.NodeProto]] = {}  # by the replaced node's output
    added: list[onnx.TensorProto] = []
    for node in graph.node:
        flat = producer.get(node.input[0])
        if _perm(node) != [0, 2, 1] or flat is None or flat.op_type != "Reshape":
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
        replaced[node.output[0]] = [
            helper.make_node(
                "Transpose", [x], [f"{name}/channels_last"], name=f"{name}/channels_last", perm=[0, 2, 3, 1]
            ),
            helper.make_node(
                "Reshape", [f"{name}/channels_last", shape], list(node.output), name=f"{name}/rows"
            ),
        ]
    return _replace(graph, replaced, added)  # a flattening only the Transpose read is dropped


def rewrite_map_views(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each map made from pixel rows ``P [B, H W, C]`` as
    ``Reshape(Transpose(P, (0, 2, 1)), [B, C, H, W])`` (a decoder layer's output, in the rows'
    known channel count) as ``Transpose(Reshape(P, [B, H, W, C]), (0, 3, 1, 2))``: the same values.
    OpenVINO's CPU plugin moves a 3-D ``Transpose`` with a generic kernel and a 4-D one between
    channels first and last with a compiled one (in a bf16 decoder call at 480p, 0.3-0.45 against
    1.0-1.2 ms a layer); returns how many."""
    graph = model.graph
    rows = rows_behind(graph)
    if not rows:
        return 0
    shapes = _dims(graph)
    replaced: dict[str, list[onnx.NodeProto]] = {}  # by the replaced node's output
    added: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "Reshape" or node.output[0] not in rows:
            continue
        source = rows[node.output[0]]
        name = node.name or node.output[0]
        kept, channels = f"{name}/batch_height_width", f"{name}/channels"
        added += [
            numpy_helper.from_array(np.asarray([0, 2, 3], dtype=np.int64), kept),
            numpy_helper.from_array(np.asarray([shapes[source][2]], dtype=np.int64), channels),
        ]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        replaced[node.output[0]] = [
            helper.make_node(
                "Gather", [node.input[1], kept], [f"{name}/nhwc_dims"], name=f"{name}/nhwc_dims", axis=0
            ),
            helper.make_node(
                "Concat",
                [f"{name}/nhwc_dims", channels],
                [f"{name}/nhwc_shape"],
                name=f"{name}/nhwc_shape",
                axis=0,
            ),
            helper.make_node(
                "Reshape", [source, f"{name}/nhwc_shape"], [f"{name}/nhwc"], name=f"{name}/nhwc", **attrs
            ),
            helper.make_node(
                "Transpose", [f"{name}/nhwc"], list(node.output), name=f"{name}/nchw", perm=[0, 3, 1, 2]
            ),
        ]
    return _replace(graph, replaced, added)  # a transposition only the Reshape read is dropped


def rewrite_head_transposes(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each key matrix split into heads and transposed for a product,
    ``Transpose(Reshape(K [B, S, C], [B, S, h, d]), (0, 2, 3, 1))`` (``h d = C``, both declared
    numbers), as ``Reshape(Transpose(Reshape(K, [B, S, 1, C]), (0, 3, 1, 2)), [B, h, d, S])``: the
    same values, moved by the 4-D channels-last-to-first transposition OpenVINO's CPU plugin
    compiles instead of by its generic one (the encoder at 480p: bf16 34.9 against 38.9 ms, fp32
    58.4 against 69.4); returns how many."""
    graph = model.graph
    shapes = _dims(graph)
    producer = {out: node for node in graph.node for out in node.output}
    replaced: dict[str, list[onnx.NodeProto]] = {}  # by the replaced node's output
    added: list[onnx.TensorProto] = []
    for node in graph.node:
        split = producer.get(node.input[0])
        if _perm(node) != [0, 2, 3, 1] or split is None or split.op_type != "Reshape":
            continue
        keys, heads = shapes.get(split.input[0]), shapes.get(split.output[0])
        if keys is None or heads is None or len(keys) != 3 or len(heads) != 4:
            continue
        h, d, c = heads[2], heads[3], keys[2]
        if not all(isinstance(v, int) and v > 0 for v in (h, d, c)) or h * d != c:
            continue
        name = node.name or node.output[0]
        column, by_head = f"{name}/column_shape", f"{name}/heads_shape"
        added += [
            numpy_helper.from_array(np.asarray([0, -1, 1, c], dtype=np.int64), column),
            numpy_helper.from_array(np.asarray([0, h, d, -1], dtype=np.int64), by_head),
        ]
        replaced[node.output[0]] = [
            helper.make_node("Reshape", [split.input[0], column], [f"{name}/column"], name=f"{name}/column"),
            helper.make_node(
                "Transpose",
                [f"{name}/column"],
                [f"{name}/channels_first"],
                name=f"{name}/channels_first",
                perm=[0, 3, 1, 2],
            ),
            helper.make_node(
                "Reshape", [f"{name}/channels_first", by_head], list(node.output), name=f"{name}/heads"
            ),
        ]
    return _replace(graph, replaced, added)  # a split only the Transpose read is dropped
