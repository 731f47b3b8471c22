"""The decoder graph with its deformable convolutions as single ``DeformConv`` nodes (for OpenVINO).

The export writes each deformable convolution the way PyTorch computes it
(:func:`hodor.model.deform_conv.deform_conv2d`): absolute sampling positions built from the
offsets, a ``GridSample`` of every tap, a ``MatMul`` with the weights, the bias added. Every
runtime reads that, but OpenVINO runs it slower than its own deformable convolution, and in bf16
it rounds the absolute positions (pixel coordinates up to the map's width) to 8 bits of
mantissa, moving samples by a sizeable fraction of a pixel.

:func:`rewrite_deform_convs` replaces each such subgraph of an exported decoder by one ONNX
``DeformConv`` node (opset 19; same semantics: torchvision's, zeros outside the map) reading the
same input, the offsets convolution's output, the weights and the bias, and drops what only fed
the old subgraph. :func:`openvino_deform_conv` maps ``DeformConv`` onto OpenVINO's
``DeformableConvolution`` (``bilinear_interpolation_pad``: zeros outside, as ``grid_sample``),
which takes the offsets as they are (a few pixels, which bf16 keeps to a hundredth of a pixel)
and computes the positions inside. The rewrite is checked against the graph as exported in
``tests/test_native_deform_conv.py`` (ONNX Runtime runs both: it has ``DeformConv`` too).

The rewrite matches the subgraph the exporter writes for this model; a graph that does not have
that shape raises :class:`UnexpectedGraph`, and the caller keeps the graph as exported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

DEFORM_CONV_OPSET = 19  # DeformConv's first version


class UnexpectedGraph(ValueError):
    """The graph's deformable convolutions are not in the exporter's shape; the message says where."""


def rewrite_deform_convs(model: onnx.ModelProto) -> int:
    """Replace, in place, every ``GridSample -> Reshape -> MatMul(weight) -> Add(bias) -> Reshape``
    of ``model`` by one ``DeformConv`` node; returns how many. Raises :class:`UnexpectedGraph`
    (leaving ``model`` untouched) when a ``GridSample`` is not part of such a subgraph."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name: init for init in graph.initializer}

    def single(tensor: str, op: str) -> onnx.NodeProto:
        users = consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op:
            raise UnexpectedGraph(f"{tensor} feeds {[u.op_type for u in users]}, not one {op}")
        return users[0]

    def constant(tensor: str) -> onnx.TensorProto:
        """The initializer behind ``tensor``, through reshapes."""
        while tensor not in initializers:
            node = producer.get(tensor)
            if node is None or node.op_type not in ("Reshape", "Unsqueeze"):
                raise UnexpectedGraph(f"{tensor} is not a constant")
            tensor = node.input[0]
        return initializers[tensor]

    def offsets_of(grid: str, data: str) -> str:
        """The one convolution output among the grid's ancestors: the predicted offsets."""
        stack, seen, found = [grid], set(), set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor == data or tensor not in producer:
                continue
            seen.add(tensor)
            node = producer[tensor]
            if node.op_type == "Conv":
                found.add(node.output[0])
            else:
                stack.extend(node.input)
        if len(found) != 1:
            raise UnexpectedGraph(f"the sampling grid {grid} comes from {len(found)} convolutions, not one")
        return found.pop()

    replacements: dict[int, onnx.NodeProto] = {}  # id of the last node replaced -> its DeformConv
    removed: set[int] = set()
    new_initializers = []
    for sample in [n for n in graph.node if n.op_type == "GridSample"]:
        flatten = single(sample.output[0], "Reshape")
        product = single(flatten.output[0], "MatMul")
        add = single(product.output[0], "Add")
        unflatten = single(add.output[0], "Reshape")
        weight_init = constant(product.input[0])
        weight = numpy_helper.to_array(weight_init)
        bias = numpy_helper.to_array(constant(add.input[1])).reshape(-1)
        if weight.ndim != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 != 1:
            raise UnexpectedGraph(f"{product.name}: weight {weight.shape}, not [O, C, k, k] with k odd")
        if bias.shape != (weight.shape[0],):
            raise UnexpectedGraph(f"{add.name}: bias of {bias.size} values for {weight.shape[0]} channels")
        k = int(weight.shape[2])
        bias_init = numpy_helper.from_array(bias.astype(np.float32), f"{sample.name}.deform_conv_bias")
        new_initializers.append(bias_init)
        replacements[id(unflatten)] = helper.make_node(
            "DeformConv",
            [sample.input[0], weight_init.name, offsets_of(sample.input[1], sample.input[0]), bias_init.name],
            [unflatten.output[0]],
            name=f"{sample.name}.deform_conv",
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
        )
        removed.update(id(n) for n in (sample, flatten, product, add, unflatten))
    if not replacements:
        return 0

    nodes = []
    for node in graph.node:
        if id(node) in replacements:
            nodes.append(replacements[id(node)])
        elif id(node) not in removed:
            nodes.append(node)
    # Keep what the outputs still need (the old positions' arithmetic goes), in order.
    needed = {out.name for out in graph.output}
    kept = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [init for init in [*graph.initializer, *new_initializers] if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < DEFORM_CONV_OPSET:
            opset.version = DEFORM_CONV_OPSET
    return len(replacements)


def openvino_deform_conv() -> Any:
    """An OpenVINO front-end extension converting ONNX ``DeformConv`` (stride 1, dilation 1, one
    group, no mask, as :func:`rewrite_deform_convs` writes it) to ``DeformableConvolution``."""
    import openvino.opset8 as ops
    from openvino.frontend import ConversionExtension

    def convert(node: Any) -> list[Any]:
        x, weight, offsets, bias = (node.get_input(i) for i in range(4))
        pads = list(node.get_attribute("pads"))
        out = ops.deformable_convolution(
            x, offsets, weight, [1, 1], pads[:2], pads[2:], [1, 1], bilinear_interpolation_pad=True
        )
        per_channel = ops.unsqueeze(bias, ops.constant(np.array([0, 2, 3], dtype=np.int64)))
        return [ops.add(out, per_channel).output(0)]

    return ConversionExtension("DeformConv", convert)
