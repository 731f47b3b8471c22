"""Deformable convolution v1 (one offset group, no modulation) from grid sampling and a matmul.

Semantics are those of the usual ``DeformConv2d`` (stride 1, dilation 1, "same"
padding): for output pixel (y, x) and kernel tap (i, j), taken row-major, the
input is read at ``(y - pad + i + dy, x - pad + j + dx)`` where ``(dy, dx)`` is
the tap's offset pair, bilinearly, with zeros outside the map. Sampling every
tap with ``grid_sample`` and contracting with the weights as one matmul keeps
the operation exportable (GridSample + MatMul) without a custom operator.

With the model's kernels set to ``"triton"`` (:mod:`hodor.model.kernel_choice`),
:class:`DeformConv2d` runs the fused implicit-GEMM kernel of
:mod:`hodor.kernels.deform_conv` instead; this module stays the reference it is
tested against, and what ONNX export traces.

On the CPU, ``grid_sample`` is the slow part (one deformable convolution at 480p's 1/8 map:
193 ms with it, 138 ms gathered, in ``benchmarks/cpu_deform.py``).
:func:`deform_conv2d_gathered` computes the same function from the same positions: each
sample's four bilinear corners are rows of the channels-last map, summed with their weights by
``embedding_bag`` into columns ordered (pixel; tap, channel), then one matrix product.
``DeformConv2d.sampling = "gather"`` selects it (the torch backend does on the CPU); the
default, ``"grid"``, keeps the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hodor.model.kernel_choice import SelectsKernels, fused_deform_conv


def _normalised(coord: Tensor, size: int) -> Tensor:
    """Pixel coordinate -> ``grid_sample`` coordinate for ``align_corners=False``.

    ``grid_sample`` reads pixel ``((g + 1) * size - 1) / 2`` for normalised ``g``; this is its inverse.
    """
    return (2.0 * coord + 1.0) / size - 1.0


def _positions(x: Tensor, offsets: Tensor, kh: int, kw: int) -> tuple[Tensor, Tensor]:
    """Pixel coordinates ``py, px [B, kh*kw, H, W]`` each tap of each output pixel reads: the
    undeformed tap plus its offset. Positions reach ~100s of pixels: in half precision they would
    be off by a sizeable fraction of a pixel, so they are float32 at least."""
    b, _, h, w = x.shape
    taps = kh * kw
    pos_dtype = torch.promote_types(x.dtype, torch.float32)
    off = offsets.to(pos_dtype).unflatten(1, (taps, 2))  # [B, taps, 2, H, W]
    # Undeformed sampling position of every tap, relative to the output pixel.
    tap = torch.arange(taps, device=x.device)
    tap_dy = (tap // kw - (kh - 1) // 2).to(pos_dtype)[:, None, None]  # [taps, 1, 1]
    tap_dx = (tap % kw - (kw - 1) // 2).to(pos_dtype)[:, None, None]
    rows = torch.arange(h, device=x.device).to(pos_dtype)[None, :, None]  # [1, H, 1]
    cols = torch.arange(w, device=x.device).to(pos_dtype)[None, None, :]  # [1, 1, W]
    return rows + tap_dy + off[:, :, 0], cols + tap_dx + off[:, :, 1]


def deform_conv2d(x: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Deformable 3x3 (any odd kxk) convolution, stride 1, "same" padding.

    Args:
        x: ``[B, C, H, W]`` input.
        offsets: ``[B, 2*kh*kw, H, W]``, per tap ``(dy, dx)``, taps row-major.
        weight: ``[O, C, kh, kw]``.
        bias: ``[O]`` or None.

    Returns:
        ``[B, O, H, W]``.
    """
    b, c, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    taps = kh * kw
    py, px = _positions(x, offsets, kh, kw)  # [B, taps, H, W]
    pos_dtype = py.dtype
    grid = torch.stack((_normalised(px, w), _normalised(py, h)), dim=-1)  # [B, taps, H, W, 2]
    sampled = F.grid_sample(
        x.to(pos_dtype), grid.flatten(1, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    ).to(x.dtype)  # [B, C, taps*H, W]

    # Columns ordered (channel, tap), as the weight's [C, kh, kw] flattening.
    columns = sampled.reshape(b, c * taps, h * w)
    out = torch.matmul(weight.reshape(out_ch, c * taps), columns)  # [B, O, H*W]
    if bias is not None:
        out = out + bias[:, None]
    return out.unflatten(-1, (h, w))


def deform_conv2d_gathered(x: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """:func:`deform_conv2d` with its sampling as gathers of bilinear corners (see the module
    docstring): the same arguments and result, up to the order of the sums. Positions, corner
    weights and the sampled columns are float32 at least, as in :func:`deform_conv2d`; the
    product runs in ``x``'s dtype."""
    b, c, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    taps = kh * kw
    py, px = _positions(x, offsets, kh, kw)
    pos_dtype = py.dtype
    # Positions ordered (batch, pixel, tap): the columns' rows and their tap-major blocks.
    py, px = py.permute(0, 2, 3, 1), px.permute(0, 2, 3, 1)  # [B, H, W, taps]
    y0, x0 = torch.floor(py), torch.floor(px)
    fy, fx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    first_row = (torch.arange(b, device=x.device) * (h * w))[:, None, None, None]
    corners, weights = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            # A corner outside the map reads row 0 with weight 0: zero, as grid_sample's padding.
            corners.append(torch.where(inside, yy * w + xx, 0) + first_row)
            weights.append(torch.where(inside, wy * wx, 0.0))
    table = x.to(pos_dtype).permute(0, 2, 3, 1).reshape(b * h * w, c)  # channels-last rows
    samples = b * h * w * taps
    columns = F.embedding_bag(
        torch.stack(corners, dim=-1).reshape(-1),
        table,
        torch.arange(0, 4 * samples, 4, device=x.device),
        mode="sum",
        per_sample_weights=torch.stack(weights, dim=-1).reshape(-1),
    ).to(x.dtype)  # [B*H*W*taps, C]
    # The weight's [C, kh, kw] reordered (tap, channel), as the columns.
    flat_weight = weight.permute(0, 2, 3, 1).reshape(out_ch, taps * c)
    columns = columns.view(b * h * w, taps * c)
    if bias is not None:
        out = torch.addmm(bias, columns, flat_weight.t())
    else:
        out = columns @ flat_weight.t()
    return out.view(b, h * w, out_ch).transpose(1, 2).reshape(b, out_ch, h, w)


SAMPLINGS = ("grid", "gather")
"""How :class:`DeformConv2d` samples with ``kernels == "torch"``: ``grid_sample`` (the reference)
or :func:`deform_conv2d_gathered`."""


class DeformConv2d(SelectsKernels, nn.Module):
    """Parameters named as in the official checkpoints: ``weight [O, C, k, k]``, ``bias [O]``.

    With ``kernels == "triton"`` the fused kernel computes it, from a copy of the weight
    in the kernel's layout that is kept between calls and rebuilt when the weight changes
    (moved, cast, or written in place; for weights created under ``torch.inference_mode``,
    which keep no version count, only moving or casting is seen). The copy is a plain
    attribute, not part of the checkpoint.

    With ``kernels == "torch"``, ``sampling`` (a plain attribute, one of :data:`SAMPLINGS`)
    chooses :func:`deform_conv2d` (``"grid"``, the default) or :func:`deform_conv2d_gathered`.
    """

    sampling: str = "grid"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("only odd kernel sizes ('same' padding) are supported")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.zeros_(self.bias)
        self._packed: Tensor | None = None
        self._packed_key: tuple | None = None

    def forward(self, x: Tensor, offsets: Tensor) -> Tensor:
        """``x [B, C, H, W]``, ``offsets [B, 2*k*k, H, W]`` -> ``[B, O, H, W]``."""
        if self.kernels == "triton":
            kernel = fused_deform_conv()
            return kernel.deform_conv2d_triton(
                x, offsets, self.weight, self.bias, packed_weight=self._packed_weight(kernel.pack_weight)
            )
        if self.sampling == "gather":
            return deform_conv2d_gathered(x, offsets, self.weight, self.bias)
        return deform_conv2d(x, offsets, self.weight, self.bias)

    def _packed_weight(self, pack: Callable[[Tensor], Tensor]) -> Tensor:
        w = self.weight
        # _version counts in-place writes (load_state_dict copies into the parameter); inference
        # tensors (weights made under torch.inference_mode) have none, and are keyed by storage.
        version = None if w.is_inference() else w._version
        key = (w.data_ptr(), version, w.dtype, w.device, tuple(w.shape))
        if self._packed is None or self._packed_key != key:
            self._packed = pack(w.detach())
            self._packed_key = key
        return self._packed


class DeformConvBlock(nn.Module):
    """Offsets predicted by a plain 3x3 convolution, then a deformable 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_offsets = nn.Conv2d(channels, 3 * 3 * 2, 3, padding=1)
        self.conv_deform = DeformConv2d(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        return self.conv_deform(x, self.conv_offsets(x))
