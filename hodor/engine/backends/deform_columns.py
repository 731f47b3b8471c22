"""The decoder's deformable convolutions in bf16 on OpenVINO: sampled columns, then one bf16 product.

OpenVINO's ``DeformableConvolution`` (what :mod:`hodor.engine.backends.native_deform_conv` hands
the decoder's deformable convolutions to) has an fp32 kernel only: with ``--precision bf16`` its
products, 37 of the decoder's 102 GFLOP at 480p, stay fp32, the largest piece of a bf16 frame.
Here each ``DeformConv`` node (as that rewrite writes it) becomes

    x -> Transpose (channels last) -> Cast (bf16) -> HodorDeformColumns(x, offsets) -> MatMul(weights)
      -> + bias -> NCHW

(where ``x`` is a decoder layer's output, pixel rows ``[B, H W, C]`` transposed and reshaped to
``[B, C, H, W]``, the columns read the rows reshaped to ``[B, H, W, C]`` instead of transposing
``x`` back: one transposition of the map less for each of the decoder's last four layers)

``HodorDeformColumns`` (``openvino_ops.cpp`` beside this file) is a small OpenVINO operation that
samples every tap of every pixel bilinearly at its offset position, zeros outside, and writes the
samples channels last, in bf16; OpenVINO then runs the product with the weights ``[(i, j, c), o]``
as a bf16 matrix product. The sampling is the same function as the model's (checked against it in
``tests/test_deform_columns.py``); the sampled values and the weights are rounded to bf16 as every
other product of a bf16 stage is.

The operation is built on first use with the machine's C++ compiler
(:mod:`hodor.engine.backends.openvino_ops`); where it cannot be, the backend keeps OpenVINO's
fp32 ``DeformableConvolution``, with a warning saying why.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.onnx_edit import NodeWriter, Replacement, rewrite_each
from hodor.engine.backends.openvino_ops import OP_DOMAIN, bf16_tensor, declare_domain
from hodor.engine.backends.pixel_rows import rows_behind

OP_TYPE = "HodorDeformColumns"


def rewrite_as_columns(model: onnx.ModelProto) -> int:
    """Replace, in place, every ``DeformConv`` node of ``model`` (stride 1, dilation 1, one group, no
    mask, square odd kernel, constant weights and bias: as
    :func:`~hodor.engine.backends.native_deform_conv.rewrite_deform_convs` writes them) by the
    columns operation in bf16 and a product; returns how many. Others are left as they are."""
    rows = rows_behind(model.graph)
    count = rewrite_each(model.graph, lambda node, inits: _as_columns(node, inits, rows))
    if not count:
        return 0
    declare_domain(model)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 15:
            opset.version = 15  # Shape's end attribute
    return count


def _as_columns(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], rows: dict[str, str]
) -> Replacement | None:
    """The nodes replacing ``node`` when it is a ``DeformConv`` this rewrite takes, else None;
    ``rows``: :func:`rows_behind`."""
    if node.op_type != "DeformConv" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weight_init = initializers.get(node.input[1])
    bias_init = initializers.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if weight_init is None or bias_init is None or (len(node.input) > 4 and node.input[4]):
        return None
    weight = numpy_helper.to_array(weight_init)
    k = int(weight.shape[2]) if weight.ndim == 4 else 0
    plain = (
        weight.ndim == 4
        and weight.shape[2] == weight.shape[3]
        and k % 2 == 1
        and list(attrs.get("strides", [1, 1])) == [1, 1]
        and list(attrs.get("dilations", [1, 1])) == [1, 1]
        and attrs.get("group", 1) == 1
        and attrs.get("offset_group", 1) == 1
        and list(attrs.get("pads", [0] * 4)) == [k // 2] * 4
    )
    if not plain:
        return None
    return _columns_nodes(node, weight, numpy_helper.to_array(bias_init).reshape(-1), rows.get(node.input[0]))


def _columns_nodes(
    conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray, rows: str | None = None
) -> Replacement:
    """The nodes computing the ``DeformConv`` node ``conv`` as columns and a product (NCHW in and
    out, the same tensor names), and their constants. ``rows``: the pixel rows ``[B, H W, C]``
    the input map was made from, if it was: the columns then read those, reshaped to
    ``[B, H, W, C]`` (no transposition)."""
    out_ch, in_ch, k = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
    prefix = f"{conv.name or conv.output[0]}/columns"
    constants = {
        "bias": bias.astype(np.float32),
        "flat": np.array([0, -1, k * k * in_ch], np.int64),
        "channels": np.array([out_ch], np.int64),
    }
    if rows is not None:
        constants["in_channels"] = np.array([in_ch], np.int64)
    initializers = [numpy_helper.from_array(value, f"{prefix}_{what}") for what, value in constants.items()]
    # the weights [O, C, i, j] as [(i, j, c), O], the columns' order, in bf16 as the columns are: the
    # product then reads the columns as they are and hands its result on in bf16
    columns_order = weight.transpose(2, 3, 1, 0).reshape(k * k * in_ch, out_ch)
    initializers.append(bf16_tensor(f"{prefix}_weight", columns_order))
    writer = NodeWriter(prefix)
    op = writer.op
    if rows is None:
        x = op("Transpose", [conv.input[0]], "nhwc", perm=[0, 2, 3, 1])
    else:
        # The map's pixel rows are already channels last: [B, H W, C] -> [B, H, W, C].
        batch = op("Shape", [conv.input[0]], "batch", end=1)
        size = op("Shape", [conv.input[0]], "size", start=2, end=4)
        x = op(
            "Reshape",
            [rows, op("Concat", [batch, size, f"{prefix}_in_channels"], "nhwc_shape", axis=0)],
            "nhwc",
        )
    # Declared bf16, OpenVINO hands the operation its bf16 map (channels last) with no conversion.
    x = op("Cast", [x], "nhwc_bf16", to=TensorProto.BFLOAT16)
    columns = op(OP_TYPE, [x, conv.input[2]], "sample", domain=OP_DOMAIN, kernel=k, pad=k // 2, bf16=1)
    grid = op("Shape", [columns], "grid", end=3)  # [N, H, W]
    flat = op("Reshape", [columns, f"{prefix}_flat"], "flat")
    product = op("Cast", [op("MatMul", [flat, f"{prefix}_weight"], "matmul")], "cast", to=TensorProto.FLOAT)
    product = op("Add", [product, f"{prefix}_bias"], "bias")
    nhwo = op("Reshape", [product, op("Concat", [grid, f"{prefix}_channels"], "shape", axis=0)], "unflat")
    op("Transpose", [nhwo], "nchw", output=conv.output[0], perm=[0, 3, 1, 2])
    return writer.nodes, initializers
