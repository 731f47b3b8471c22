"""The grid-sampling deformable convolution against a literal per-pixel loop.

The loop transcribes the usual CPU deformable im2col: tap (i, j) of output pixel
(y, x) reads ``(y - 1 + i + dy, x - 1 + j + dx)`` with ``(dy, dx)`` at channels
``2k, 2k+1`` (k = 3i + j), bilinearly, each corner outside the map counting as zero
and the whole sample zero when the point lies at or beyond one pixel outside.
"""

from __future__ import annotations

import math

import pytest
import torch

from hodor.model.deform_conv import DeformConvBlock, deform_conv2d


def _bilinear(img: list[list[float]], height: int, width: int, h: float, w: float) -> float:
    if h <= -1 or height <= h or w <= -1 or width <= w:
        return 0.0
    h_low, w_low = math.floor(h), math.floor(w)
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    v1 = img[h_low][w_low] if h_low >= 0 and w_low >= 0 else 0.0
    v2 = img[h_low][w_high] if h_low >= 0 and w_high <= width - 1 else 0.0
    v3 = img[h_high][w_low] if h_high <= height - 1 and w_low >= 0 else 0.0
    v4 = img[h_high][w_high] if h_high <= height - 1 and w_high <= width - 1 else 0.0
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def _loop_deform_conv(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    b_sz, c_in, height, width = x.shape
    c_out, _, kh, kw = weight.shape
    xs, off, wt, bs = x.double().tolist(), offsets.double().tolist(), weight.double().tolist(), bias.tolist()
    out = torch.zeros(b_sz, c_out, height, width, dtype=torch.float64)
    for b in range(b_sz):
        for y in range(height):
            for x_ in range(width):
                # columns[c][k] as in im2col
                cols = [[0.0] * (kh * kw) for _ in range(c_in)]
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        py = y - 1 + i + off[b][2 * k][y][x_]
                        px = x_ - 1 + j + off[b][2 * k + 1][y][x_]
                        for c in range(c_in):
                            cols[c][k] = _bilinear(xs[b][c], height, width, py, px)
                for o in range(c_out):
                    acc = bs[o]
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                acc += wt[o][c][i][j] * cols[c][i * kw + j]
                    out[b, o, y, x_] = acc
    return out


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("offset_scale", [0.0, 0.7, 3.0])
def test_matches_loop(offset_scale: float) -> None:
    gen = torch.Generator().manual_seed(int(offset_scale * 10))
    x = torch.randn(2, 3, 5, 7, generator=gen)
    offsets = offset_scale * torch.randn(2, 18, 5, 7, generator=gen)
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    bias = torch.randn(4, generator=gen)
    got = deform_conv2d(x, offsets, weight, bias)
    assert got.shape == (2, 4, 5, 7) and got.dtype == torch.float32
    assert _rel_err(got, _loop_deform_conv(x, offsets, weight, bias)) <= 1e-5


def test_taps_outside_and_on_the_border() -> None:
    """Offsets that land exactly on the -1 / size limits, just inside them, and far outside."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 4, 5, generator=gen)
    weight = torch.randn(3, 2, 3, 3, generator=gen)
    bias = torch.randn(3, generator=gen)
    offsets = torch.zeros(1, 18, 4, 5)
    ys = torch.arange(4.0)[:, None].expand(4, 5)
    xs = torch.arange(5.0)[None, :].expand(4, 5)
    # tap 0 (i=j=0) reads (y-1+dy, x-1+dx): put it exactly at row -1 and column 5 (= width).
    offsets[0, 0] = -ys
    offsets[0, 1] = 6 - xs
    # tap 4 (centre): slightly inside the top-left limit, partially outside.
    offsets[0, 8] = -ys - 0.999
    offsets[0, 9] = -xs - 0.25
    # tap 8 (i=j=2): far outside the bottom-right.
    offsets[0, 16] = 10.0
    offsets[0, 17] = 3.5
    # tap 5: exactly on the last row, at a fractional column.
    offsets[0, 10] = 3 - ys
    offsets[0, 11] = 0.5
    got = deform_conv2d(x, offsets, weight, bias)
    assert _rel_err(got, _loop_deform_conv(x, offsets, weight, bias)) <= 1e-5


def test_zero_offsets_is_a_plain_convolution() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 6, 6, generator=gen)
    weight = torch.randn(5, 4, 3, 3, generator=gen)
    bias = torch.randn(5, generator=gen)
    got = deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, bias)
    want = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_block_keys() -> None:
    keys = set(DeformConvBlock(8).state_dict())
    assert keys == {"conv_offsets.weight", "conv_offsets.bias", "conv_deform.weight", "conv_deform.bias"}


def test_module_with_triton_kernels_follows_its_weight(monkeypatch) -> None:
    """``DeformConv2d`` with ``kernels = "triton"`` (Triton's interpreter here): the torch path's
    result, and again after the weight is loaded anew in place, cast, or made under
    ``torch.inference_mode`` (no version counter)."""
    pytest.importorskip("triton", reason="the fused kernel needs the triton package")
    from hodor.kernels.testing import assert_close
    from hodor.model.deform_conv import DeformConv2d

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 5, 6, 7, generator=gen)
    offsets = 2 * torch.randn(1, 18, 6, 7, generator=gen)
    conv = DeformConv2d(5, 4)

    def both() -> None:
        want = deform_conv2d(x.double(), offsets.double(), conv.weight.double(), conv.bias.double())
        conv.kernels = "triton"
        try:
            assert_close(conv(x, offsets), want, torch.float32)
        finally:
            conv.kernels = "torch"

    with torch.no_grad():
        both()
        conv.load_state_dict({"weight": torch.randn(4, 5, 3, 3, generator=gen), "bias": torch.randn(4)})
        both()  # an in-place write: the packed copy is rebuilt
    with torch.inference_mode():
        made_here = DeformConv2d(5, 4)
        made_here.load_state_dict(conv.state_dict())
        conv = made_here
        both()
