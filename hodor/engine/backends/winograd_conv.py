"""Dense 3x3 convolutions of an exported graph rewritten as Winograd convolutions (for OpenVINO).

A 3x3 convolution computes each output pixel from nine products per input channel. Winograd's
F(4x4, 3x3) computes a 4x4 block of outputs from a 6x6 block of input: the block is transformed
(``B^T d B``), multiplied element by element with the transformed
weights (``G g G^T``, computed here once from the graph's constant weights), and transformed
back (``A^T m A``). Summed over the input channels, the element-wise products become 36 matrix
products of (tiles x C) by (C x K): 36 multiplications per 16 outputs instead of 144, 4x fewer.
What it costs is memory traffic: the transformed input is 2.25x the input. F(3x3, 3x3) does the
same with 5x5 input blocks: 25 products per 9 outputs, 3.24x fewer multiplications; F(2x2, 3x3)
with 4x4 ones: 16 products per 4 outputs, 2.25x fewer; F(6x6, 3x3) with 8x8 ones: 64 products per
36 outputs, 5.06x fewer, and a transformed input 1.78x the input.

:func:`rewrite_winograd_ops` replaces each eligible ``Conv`` node of an ONNX graph (3x3,
stride 1, padding 1, no dilation or groups, constant weights, at least ``min_channels`` in and
out) by the transforms as two of the engine's own OpenVINO operations
(:mod:`hodor.engine.backends.openvino_ops`) around one batched ``MatMul``:

    x -> Transpose (channels last) -> HodorWinogradTiles -> MatMul (the products with the
      transformed weights) -> HodorWinogradUntile (+ bias) -> Transpose (NCHW)

or, with ``nchw``, with no ``Transpose``: the operations read and write the map channels first
themselves (each tile row's input rows copied channels last, 16 channels at a time). Which is
faster depends on how OpenVINO keeps the map it hands over: the backend passes ``nchw`` for the
backbone, whose FPN convolutions read sums OpenVINO keeps channels first (its ``Transpose`` of
those took 10 ms of a bf16 backbone call), and not for the decoder, whose maps it keeps channels
last (there the ``Transpose`` costs nothing).

F(6x6, 3x3) for fp32 stages (points 0, 1, -1, 1/2, -1/2, 2, -2): against F(4x4, 3x3)
(``benchmarks/cpu_winograd.py`` at 480p, OpenVINO on two cores) the FPN's 1/4-map convolution
(256 -> 256 channels, 120x208) took 55.5 against 64.4 ms and a frame's four such convolutions
166 against 185 ms, at 6.1e-6 from float64 (relative norm) against 3.2e-6 (a direct fp32
convolution 8.6e-7); the backbone's features 8.8e-6 from PyTorch against 5.7e-6, the logits
5.5e-6 against 4.2e-6 (``benchmarks/RESULTS.md``). F(3x3, 3x3) for bf16 ones. Rounding the
transformed values to bf16 costs precision in proportion to how far the transforms scale them:
against float64, with weights of a trained layer's scale, at the model's shapes
(``benchmarks/cpu_winograd.py``), a direct bf16 convolution is off by 2.3-2.9e-3 (relative
norm), F(2x2, 3x3), whose transforms only add and subtract, 5.4e-3, F(3x3, 3x3) (points 0, 1,
-1, 2) 1.7e-2, F(4x4, 3x3) 3.1e-2. F(3x3, 3x3) was taken for its speed (the bf16 backbone 307
against 318 ms with F(2x2, 3x3), the decoder 258 against 274) at a stage cost measured at 480p:
the backbone's features 1.9e-2 from PyTorch fp32 (1.4e-2 with F(2x2, 3x3)), the decoder's logits
1.8e-2 (1.7e-2); the bf16 limit is 5e-2. ``tile=2`` stays available (the backend's
``bf16_winograd_tile``). In bf16 a ``Cast`` to bf16 precedes the tiles and one to float32
follows the untile, the weights are a bf16 constant: every tensor between the casts in bf16,
which is how OpenVINO keeps a bf16 stage's maps, so the maps reach the operations and come back
with no further conversion (declared float32, the conversions took longer than the transforms),
and OpenVINO reads the tiles and hands the products on as they are. In a bf16 stage every product's operands
and every operation's result are rounded to bf16 anyway.

:func:`rewrite_winograd_convs`, for where the operations cannot be built (no C++ compiler),
writes F(4x4, 3x3) in plain ONNX operations instead, channels last: the 36 entries of every tile
gathered by strided slices, then three matrix products (the input transform as
``B^T kron B^T`` times the 36 planes, the 36 products with the weights, the output transform as
``A^T kron A^T``). About 90 nodes a convolution (as sums of slices, 500 nodes, slower to compile
and to run), and its transforms took longer than the operations' (``benchmarks/cpu_winograd.py``).
Shapes stay free (any batch, height, width) either way. OpenVINO's CPU plugin runs both faster
than its own direct fp32 convolution of the model's 256-channel maps; ONNX Runtime gains little
from the graph form and cannot load the operations, so its graphs stay as exported.

The arithmetic is exact in real numbers; in fp32 the result differs from a direct convolution
by a few units in 1e-6 relative (the transforms scale values by up to 100 and back).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.onnx_edit import NodeWriter, Replacement, rewrite_each
from hodor.engine.backends.openvino_ops import OP_DOMAIN, bf16_tensor, declare_domain

# F(4x4, 3x3): input transform B^T (6x6), weight transform G (6x3), output transform A^T (4x6).
B_T = np.array(
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    dtype=np.float64,
)  # fmt: skip
G = np.array(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    dtype=np.float64,
)  # fmt: skip
A_T = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=np.float64
)
# F(2x2, 3x3) and F(3x3, 3x3) (points 0, 1, -1, 2): their weight transforms; the input and output
# transforms are in openvino_ops.cpp.
G_2 = np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], dtype=np.float64)
G_3 = np.array(
    [[1 / 2, 0, 0], [-1 / 2, -1 / 2, -1 / 2], [-1 / 6, 1 / 6, -1 / 6], [1 / 6, 1 / 3, 2 / 3], [0, 0, 1]],
    dtype=np.float64,
)
# F(6x6, 3x3) (points 0, 1, -1, 1/2, -1/2, 2, -2): its weight transform; the others are in
# openvino_ops.cpp.
G_6 = np.array(
    [[1, 0, 0], [-2 / 9, -2 / 9, -2 / 9], [-2 / 9, 2 / 9, -2 / 9],
     [32 / 45, 16 / 45, 8 / 45], [32 / 45, -16 / 45, 8 / 45],
     [1 / 90, 1 / 45, 2 / 45], [1 / 90, -1 / 45, 2 / 45], [0, 0, 1]],
    dtype=np.float64,
)  # fmt: skip
WEIGHT_TRANSFORMS = {2: G_2, 3: G_3, 4: G, 6: G_6}
"""Each output tile (outputs a side) the engine's Winograd operations compute, and its ``G``."""
TILES = tuple(WEIGHT_TRANSFORMS)
OUT_TILE, IN_TILE = 4, 6
MIN_CHANNELS = 64
"""Below this many input or output channels the product is too small to pay for the transforms
(the decoder's 18-channel offset convolutions run slower this way)."""

_INT64_MAX = np.iinfo(np.int64).max


class _Builder(NodeWriter):
    """A :class:`NodeWriter` whose nodes and constants are numbered in order, and the constants
    it adds."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _what(self, kind: str) -> str:
        self._count += 1
        return f"{kind}_{self._count}"

    def const(self, value: np.ndarray | Sequence[int] | int | float, dtype: type = np.int64) -> str:
        name = f"{self.prefix}_{self._what('const')}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, kind: str, inputs: Sequence[str], output: str | None = None, **attrs: object) -> str:
        """:meth:`op` under the next number."""
        return self.op(kind, inputs, self._what(kind), output, **attrs)

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        return self.node("Slice", [x, self.const([start]), self.const([end]), self.const([axis])])

    def take(self, x: str, axis: int, index: int) -> str:
        """``x`` at ``index`` along ``axis``, that axis removed."""
        return self.node("Gather", [x, self.const(index)], axis=axis)


def _winograd_nodes(conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None) -> _Builder:
    """The nodes computing ``conv`` (NCHW in, NCHW out, same names) as F(4x4, 3x3)."""
    out_ch, in_ch = weight.shape[:2]
    nb = _Builder(conv.name or conv.output[0])
    x = nb.node("Transpose", [conv.input[0]], perm=[0, 2, 3, 1])  # [b, h, w, c]
    shape = nb.node("Shape", [x])
    h, w = nb.slice(shape, 0, 1, 2), nb.slice(shape, 0, 2, 3)  # 1-D, one value each
    # tiles per side t = ceil(n / 4); padded so that t + 1 blocks of 4 follow the one leading zero
    # (tile i reads blocks i and i + 1, the latter's first two rows): 4 (t + 1) - n - 1 after.
    three, four = nb.const([3]), nb.const([4])
    tiles_h = nb.node("Div", [nb.node("Add", [h, three]), four])
    tiles_w = nb.node("Div", [nb.node("Add", [w, three]), four])
    after_h = nb.node("Sub", [nb.node("Add", [nb.node("Mul", [tiles_h, four]), three]), h])
    after_w = nb.node("Sub", [nb.node("Add", [nb.node("Mul", [tiles_w, four]), three]), w])
    pads = nb.node("Concat", [nb.const([0, 1, 1, 0, 0]), after_h, after_w, nb.const([0])], axis=0)
    padded = nb.node("Pad", [x, pads])
    blocks_w = nb.node("Add", [tiles_w, nb.const([1])])
    block_shape = nb.node(
        "Concat", [nb.const([0, -1, OUT_TILE]), blocks_w, nb.const([OUT_TILE, in_ch])], axis=0
    )
    blocks = nb.node("Reshape", [padded, block_shape])  # [b, th+1, 4, tw+1, 4, c]

    # The 36 input planes: entry (r, s) of every tile, row r of block i (r < 4) or of block i + 1
    # (its first two rows), the same for the columns.
    upper, lower = nb.slice(blocks, 1, 0, -1), nb.slice(blocks, 1, 1, _INT64_MAX)
    rows = [nb.take(upper, 2, k) for k in range(OUT_TILE)] + [nb.take(lower, 2, k) for k in range(2)]
    planes = []
    for row in rows:  # [b, th, tw+1, 4, c]
        left, right = nb.slice(row, 2, 0, -1), nb.slice(row, 2, 1, _INT64_MAX)
        planes += [nb.take(left, 3, k) for k in range(OUT_TILE)] + [nb.take(right, 3, k) for k in range(2)]
    tile_grid = nb.slice(nb.node("Shape", [planes[0]]), 0, 0, 3)  # [b, th, tw]
    stacked = nb.node("Concat", planes, axis=0)  # [36 b, th, tw, c], position-major
    d = nb.node("Reshape", [stacked, nb.const([IN_TILE * IN_TILE, -1])])
    # B^T d B for every tile and channel at once: (B^T kron B^T) times the planes.
    v = nb.node("MatMul", [nb.const(np.kron(B_T, B_T), np.float32), d])
    v = nb.node("Reshape", [v, nb.const([IN_TILE * IN_TILE, -1, in_ch])])
    u = transformed_weights_for(weight, OUT_TILE)  # [36, C, K]
    m = nb.node("MatMul", [v, nb.const(u, np.float32)])  # [36, tiles, K]
    # A^T m A likewise: (A^T kron A^T) times the 36 products -> the 16 outputs of every tile.
    m = nb.node("Reshape", [m, nb.const([IN_TILE * IN_TILE, -1])])
    y = nb.node("MatMul", [nb.const(np.kron(A_T, A_T), np.float32), m])  # [16, tiles K]
    y = nb.node(
        "Reshape",
        [y, nb.node("Concat", [nb.const([OUT_TILE, OUT_TILE]), tile_grid, nb.const([out_ch])], axis=0)],
    )  # [4, 4, b, th, tw, K]
    y = nb.node("Transpose", [y], perm=[2, 3, 0, 4, 1, 5])  # [b, th, 4, tw, 4, K]
    width = nb.node("Mul", [tiles_w, four])
    y = nb.node("Reshape", [y, nb.node("Concat", [nb.const([0, -1]), width, nb.const([out_ch])], axis=0)])
    y = nb.node("Slice", [y, nb.const([0, 0]), nb.node("Concat", [h, w], axis=0), nb.const([1, 2])])
    if bias is not None:
        y = nb.node("Add", [y, nb.const(bias, np.float32)])
    nb.node("Transpose", [y], output=conv.output[0], perm=[0, 3, 1, 2])
    return nb


def _eligible(
    conv: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], min_channels: int
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The weight and bias of a convolution F(4x4, 3x3) can replace, else None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or attrs.get("group", 1) != 1:
        return None
    if list(attrs.get("strides", [1, 1])) != [1, 1] or list(attrs.get("dilations", [1, 1])) != [1, 1]:
        return None
    if list(attrs.get("pads", [0, 0, 0, 0])) != [1, 1, 1, 1] or conv.input[1] not in initializers:
        return None
    weight = numpy_helper.to_array(initializers[conv.input[1]])
    if weight.ndim != 4 or weight.shape[2:] != (3, 3) or weight.dtype != np.float32:
        return None
    if min(weight.shape[:2]) < min_channels:
        return None
    bias = None
    if len(conv.input) > 2 and conv.input[2]:
        if conv.input[2] not in initializers:
            return None
        bias = numpy_helper.to_array(initializers[conv.input[2]]).reshape(-1)
    return weight, bias


def rewrite_winograd_convs(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS) -> int:
    """Replace, in place, every eligible 3x3 ``Conv`` of ``model`` (see the module's text) by its
    F(4x4, 3x3) computation; returns how many. Weights no other node reads are dropped."""

    def replace(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> Replacement | None:
        found = _eligible(node, initializers, min_channels) if node.op_type == "Conv" else None
        if found is None:
            return None
        built = _winograd_nodes(node, *found)
        return built.nodes, built.initializers

    return rewrite_each(model.graph, replace)


def transformed_weights_for(weight: np.ndarray, tile: int) -> np.ndarray:
    """``[K, C, 3, 3]`` -> ``[n^2, C, K]`` float32 (n = tile + 2): F(tile x tile, 3x3)'s ``G g G^T``
    for every (C, K), the n x n positions row-major first, computed in float64."""
    g = WEIGHT_TRANSFORMS[tile]
    u = (g @ weight.astype(np.float64) @ g.T).transpose(2, 3, 1, 0)  # [n, n, C, K]
    return u.reshape(len(g) ** 2, weight.shape[1], weight.shape[0]).astype(np.float32)


def rewrite_winograd_ops(
    model: onnx.ModelProto,
    tile: int = 2,
    bf16: bool = True,
    nchw: bool = False,
    min_channels: int = MIN_CHANNELS,
) -> int:
    """Replace, in place, every eligible 3x3 ``Conv`` of ``model`` (as :func:`rewrite_winograd_convs`
    takes them) by Winograd F(tile x tile, 3x3) through the engine's OpenVINO operations; returns
    how many. ``tile`` 3 with ``bf16`` (the bf16 stages' form; 2 on request) or 6 without (the
    fp32 stages'; 4 on request); ``bf16=False`` keeps every value float32; ``nchw``: the operations take and
    give the map channels first (no ``Transpose`` around them)."""
    if tile not in TILES:
        sizes = ", ".join(map(str, TILES[:-1])) + f" or {TILES[-1]}"
        raise ValueError(f"Winograd tiles of {sizes} outputs a side, not {tile}")

    def replace(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> Replacement | None:
        found = _eligible(node, initializers, min_channels) if node.op_type == "Conv" else None
        return None if found is None else _winograd_ops_nodes(node, *found, tile, bf16, nchw)

    count = rewrite_each(model.graph, replace)
    if count:
        declare_domain(model)
    return count


def _winograd_ops_nodes(
    conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None, tile: int, bf16: bool, nchw: bool
) -> Replacement:
    out_ch = int(weight.shape[0])
    prefix = f"{conv.name or conv.output[0]}/winograd{tile}"
    u = transformed_weights_for(weight, tile)
    initializers = [
        bf16_tensor(f"{prefix}_weight", u) if bf16 else numpy_helper.from_array(u, f"{prefix}_weight"),
        numpy_helper.from_array(
            (bias if bias is not None else np.zeros(out_ch)).astype(np.float32), f"{prefix}_bias"
        ),
    ]
    writer = NodeWriter(prefix)
    op = writer.op
    x = conv.input[0]
    if not nchw:
        x = op("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])
    if bf16:
        # Declared bf16 in and out, OpenVINO hands the operations its bf16 maps with no further
        # conversion, which would take longer than the transforms themselves.
        x = op("Cast", [x], "bf16", to=TensorProto.BFLOAT16)
    attrs = {"domain": OP_DOMAIN, "tile": tile, "bf16": int(bf16), "nchw": int(nchw)}
    tiles = op("HodorWinogradTiles", [x], "tiles", **attrs)
    products = op("MatMul", [tiles, f"{prefix}_weight"], "products")  # [n^2, tiles, K]
    untiled = conv.output[0] if nchw and not bf16 else None  # else a Transpose or Cast follows
    y = op("HodorWinogradUntile", [products, x, f"{prefix}_bias"], "untile", untiled, **attrs)
    if not nchw:
        y = op("Transpose", [y], "nchw", None if bf16 else conv.output[0], perm=[0, 3, 1, 2])
    if bf16:
        op("Cast", [y], "float", output=conv.output[0], to=TensorProto.FLOAT)
    return writer.nodes, initializers
