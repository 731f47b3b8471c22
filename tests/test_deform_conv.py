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

from hodor.model.deform_conv import DeformConv2d, DeformConvBlock, deform_conv2d, deform_conv2d_gathered


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


IMPLEMENTATIONS = pytest.mark.parametrize(
    "deform", [deform_conv2d, deform_conv2d_gathered], ids=["grid_sample", "gathered"]
)


@IMPLEMENTATIONS
@pytest.mark.parametrize("offset_scale", [0.0, 0.7, 3.0])
def test_matches_loop(deform, offset_scale: float) -> None:
    gen = torch.Generator().manual_seed(int(offset_scale * 10))
    x = torch.randn(2, 3, 5, 7, generator=gen)
    offsets = offset_scale * torch.randn(2, 18, 5, 7, generator=gen)
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    bias = torch.randn(4, generator=gen)
    got = deform(x, offsets, weight, bias)
    assert got.shape == (2, 4, 5, 7) and got.dtype == torch.float32
    assert _rel_err(got, _loop_deform_conv(x, offsets, weight, bias)) <= 1e-5


@IMPLEMENTATIONS
def test_taps_outside_and_on_the_border(deform) -> None:
    """Offsets that land exactly on the -1 / size limits, just inside them, and far outside; and
    positions past an edge that a flat index could wrap onto the next row or the other image."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 4, 5, generator=gen)
    weight = torch.randn(3, 2, 3, 3, generator=gen)
    bias = torch.randn(3, generator=gen)
    offsets = torch.zeros(2, 18, 4, 5)
    ys = torch.arange(4.0)[:, None].expand(4, 5)
    xs = torch.arange(5.0)[None, :].expand(4, 5)
    # tap 0 (i=j=0) reads (y-1+dy, x-1+dx): put it exactly at row -1 and column 5 (= width).
    offsets[:, 0] = -ys
    offsets[:, 1] = 6 - xs
    # tap 4 (centre): slightly inside the top-left limit, partially outside.
    offsets[:, 8] = -ys - 0.999
    offsets[:, 9] = -xs - 0.25
    # tap 8 (i=j=2): far outside the bottom-right.
    offsets[:, 16] = 10.0
    offsets[:, 17] = 3.5
    # tap 5: exactly on the last row, at a fractional column.
    offsets[:, 10] = 3 - ys
    offsets[:, 11] = 0.5
    # tap 1: half a row down, half a column past the right edge (not the next row's start).
    offsets[:, 2] = 0.5
    offsets[:, 3] = 5.0 - xs + 0.5
    # tap 2 of the second image: above the map (not the first image's last rows).
    offsets[1, 4] = -7.25
    got = deform(x, offsets, weight, bias)
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


# --------------------------------------------------------------------------- gathered sampling


@pytest.mark.parametrize("kernel,channels,out_channels", [(5, 4, 6), (1, 3, 2)])
def test_gathered_matches_grid_for_other_kernels(kernel: int, channels: int, out_channels: int) -> None:
    gen = torch.Generator().manual_seed(kernel)
    x = torch.randn(1, channels, 9, 11, generator=gen)
    offsets = 2.5 * torch.randn(1, 2 * kernel * kernel, 9, 11, generator=gen)
    weight = torch.randn(out_channels, channels, kernel, kernel, generator=gen)
    bias = torch.randn(out_channels, generator=gen)
    want = deform_conv2d(x.double(), offsets.double(), weight.double(), bias.double())
    assert _rel_err(deform_conv2d_gathered(x, offsets, weight, bias), want) <= 1e-5
    assert (
        _rel_err(deform_conv2d_gathered(x, offsets, weight, None), want - bias.double()[:, None, None])
        <= 1e-5
    )


def test_gathered_at_the_model_shape_on_fresh_inputs() -> None:
    """The decoder's shape (256 channels, a 1/8 map of a 480p frame's width cut down), fp32 and bf16."""
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(1, 256, 15, 27, generator=gen)
    offsets = 3 * torch.randn(1, 18, 15, 27, generator=gen)
    weight = torch.randn(256, 256, 3, 3, generator=gen) / 48
    bias = torch.randn(256, generator=gen)
    want = deform_conv2d(x.double(), offsets.double(), weight.double(), bias.double())
    assert _rel_err(deform_conv2d_gathered(x, offsets, weight, bias), want) <= 1e-5
    # bf16: the same rounding points as the reference in bf16 (positions and samples in fp32,
    # the product in bf16), so the two agree to bf16 accuracy and each is within it of fp32.
    args = (x.bfloat16(), offsets.bfloat16(), weight.bfloat16(), bias.bfloat16())
    got, ref = deform_conv2d_gathered(*args), deform_conv2d(*args)
    assert got.dtype == torch.bfloat16
    assert _rel_err(got, ref.double()) <= 2e-2 and _rel_err(got, want) <= 2e-2


def test_module_sampling_choice() -> None:
    gen = torch.Generator().manual_seed(5)
    conv = DeformConv2d(3, 4)
    x = torch.randn(1, 3, 6, 7, generator=gen)
    offsets = 2 * torch.randn(1, 18, 6, 7, generator=gen)
    with torch.no_grad():
        assert conv.sampling == "grid"  # the reference unless asked
        grid = conv(x, offsets)
        conv.sampling = "gather"
        gathered = conv(x, offsets)
    torch.testing.assert_close(gathered, grid, rtol=1e-5, atol=1e-5)


def test_net_sets_the_sampling_of_every_deform_conv() -> None:
    from hodor.model.network import HodorNet
    from tests.engine_fake_backend import small_config

    net = HodorNet(small_config().model)
    convs = [m for m in net.modules() if isinstance(m, DeformConv2d)]
    assert convs and all(m.sampling == "grid" for m in convs)
    assert net.set_deform_sampling("gather") is net
    assert all(m.sampling == "gather" for m in convs)
    with pytest.raises(ValueError, match="sampling must be one of"):
        net.set_deform_sampling("nearest")


def test_torch_backend_gathers_on_the_cpu() -> None:
    """The torch backend samples by gathering on the CPU unless told otherwise; both decoders agree."""
    from hodor.engine.backends.torch_backend import TorchBackend
    from hodor.model.network import HodorNet
    from tests.engine_fake_backend import small_config

    cfg = small_config()
    torch.manual_seed(0)
    net = HodorNet(cfg.model).eval()
    cpu = torch.device("cpu")
    gathered = TorchBackend(net, cfg, cpu)
    assert gathered.deform_sampling == "gather"
    assert {m.sampling for m in net.modules() if isinstance(m, DeformConv2d)} == {"gather"}
    gen = torch.Generator().manual_seed(4)
    f4, f8 = gathered.backbone(torch.randn(1, 3, 64, 96, generator=gen))
    fg, bg = gathered.encode(
        f8, torch.rand(1, 2, 8, 12, generator=gen), torch.rand(1, 9, 8, 12, generator=gen)
    )
    invalid = torch.zeros(1, 2, 1, dtype=torch.bool), torch.zeros(1, 9, 1, dtype=torch.bool)
    args = (f4, f8, fg[:, :, None], bg[:, :, None], *invalid)
    got = gathered.decode(*args)
    grid = TorchBackend(net, cfg, cpu, deform_sampling="grid")
    assert grid.deform_sampling == "grid"
    assert {m.sampling for m in net.modules() if isinstance(m, DeformConv2d)} == {"grid"}
    want = grid.decode(*args)
    assert _rel_err(got, want.double()) <= 1e-5
