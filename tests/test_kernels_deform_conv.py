"""Deformable convolution: Triton kernel against the model's torch implementation.

The reference is :func:`hodor.model.deform_conv.deform_conv2d` (``grid_sample`` + matmul,
itself checked against a literal per-pixel loop in ``test_deform_conv.py``), evaluated in
float64 on the same rounded inputs. CPU: small, odd shapes in Triton's interpreter, with
several tiles along every axis. CUDA: the decoder's real shape (1/8 map of a 480p frame,
60×108, 256 → 256 channels). Relative error and tolerances by dtype as in
:mod:`hodor.kernels.testing`.
"""

import pytest
import torch

from hodor.kernels.deform_conv import deform_conv2d_triton, deform_conv_config, pack_weight
from hodor.kernels.testing import assert_close
from hodor.model.deform_conv import deform_conv2d
from tests.triton_interpreter import skip_on_interpreter

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(b, c, o, hw, dtype, device="cpu", offset_scale=2.0, k=(3, 3), seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    kh, kw = k
    x = torch.randn(b, c, h, w, generator=g)
    offsets = offset_scale * torch.randn(b, 2 * kh * kw, h, w, generator=g)
    weight = torch.randn(o, c, kh, kw, generator=g) / (c * kh * kw) ** 0.5
    bias_t = torch.randn(o, generator=g) if bias else None
    cast = [t.to(device=device, dtype=dtype) for t in (x, offsets, weight)]
    return (*cast, None if bias_t is None else bias_t.to(device=device, dtype=dtype))


def check(x, offsets, weight, bias, dtype, **kwargs) -> float:
    out = deform_conv2d_triton(x, offsets, weight, bias, **kwargs)
    assert out.dtype == dtype and out.shape == (x.shape[0], weight.shape[0], *x.shape[2:])
    ref = deform_conv2d(
        x.double(), offsets.double(), weight.double(), None if bias is None else bias.double()
    )
    return assert_close(out, ref, dtype, "deform_conv2d")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("b", "c", "o", "hw", "offset_scale"),
    [
        (2, 5, 6, (7, 9), 0.7),  # odd everything, one tile
        (1, 40, 70, (5, 11), 3.0),  # several channel chunks and output-channel blocks
        (1, 3, 17, (13, 6), 1.5),  # several pixel tiles, a partial last one
    ],
)
def test_interpreter(interpreter, dtype, b, c, o, hw, offset_scale):
    skip_on_interpreter(dtype)
    check(*make_inputs(b, c, o, hw, dtype, offset_scale=offset_scale, seed=c), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_cuda_tiles(interpreter, dtype):
    """The tiles CUDA launches use (the interpreter otherwise takes its own, larger ones)."""
    cfg = deform_conv_config(70, dtype)
    tiles = {"block_p": cfg["BLOCK_P"], "block_o": cfg["BLOCK_O"], "block_c": cfg["BLOCK_C"]}
    check(*make_inputs(1, 40, 70, (9, 8), dtype, seed=2), dtype, **tiles)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_small_tiles(interpreter, dtype):
    """16-wide tiles on every axis: many programs, chunks and partial tiles."""
    check(*make_inputs(1, 33, 20, (7, 5), dtype, seed=3), dtype, block_p=16, block_o=16, block_c=16)


def test_interpreter_samples_far_outside(interpreter):
    """Offsets of hundreds to millions of pixels (and one tap of each sign per axis): zeros,
    never an overflowed index."""
    x, offsets, weight, bias = make_inputs(1, 6, 5, (6, 8), torch.float32, seed=4)
    offsets[0, 0] = 300.0  # tap 0: far below
    offsets[0, 3] = -1e6  # tap 1: far left
    offsets[0, 4:6] = 1e9  # tap 2: far below-right
    offsets[0, 6] = -45.5  # tap 3: above, at a half pixel
    offsets[0, 16, :, ::2] = 1e30  # tap 8: every other column far below
    check(x, offsets, weight, bias, torch.float32)
    # With every tap outside, only the bias is left.
    offsets.fill_(-1e4)
    out = deform_conv2d_triton(x, offsets, weight, bias)
    assert torch.equal(out, bias[None, :, None, None].expand_as(out))


def test_interpreter_offsets_on_pixel_borders(interpreter):
    """Samples exactly at rows/columns −1 and H/W (the last positions that still weigh
    nothing), just inside them, exactly on pixel centres and exactly half-way."""
    x, _, weight, bias = make_inputs(1, 4, 3, (5, 6), torch.float32, seed=5)
    h, w = 5, 6
    ys = torch.arange(float(h))[:, None].expand(h, w)
    xs = torch.arange(float(w))[None, :].expand(h, w)
    offsets = torch.zeros(1, 18, h, w)
    # tap k = 3i + j reads (y - 1 + i + dy, x - 1 + j + dx).
    offsets[0, 0], offsets[0, 1] = -ys, -xs  # tap 0 -> row -1, column -1 exactly
    offsets[0, 2], offsets[0, 3] = h - ys + 1, 0.0  # tap 1 -> row h exactly
    offsets[0, 4], offsets[0, 5] = 0.0, w - xs - 1  # tap 2 -> column w exactly
    offsets[0, 6], offsets[0, 7] = -ys - 0.999, -xs + 1e-3  # tap 3 -> just inside row -1
    offsets[0, 8], offsets[0, 9] = 0.5, -0.5  # tap 4 -> half-way between pixels
    offsets[0, 10], offsets[0, 11] = h - 1 - ys, -xs + 0.25  # tap 5 -> last row exactly
    offsets[0, 12], offsets[0, 13] = 2.0, -3.0  # tap 6 -> integer shifts (pixel centres)
    offsets[0, 14], offsets[0, 15] = h - ys - 1.0001, w - xs - 2.0001  # tap 7 -> just inside row h
    check(x, offsets, weight, bias, torch.float32)
    check(x.half(), offsets.half(), weight.half(), bias.half(), torch.float16)


def test_interpreter_zero_offsets_is_a_plain_convolution(interpreter):
    x, offsets, weight, bias = make_inputs(1, 7, 9, (6, 5), torch.float32, seed=6)
    out = deform_conv2d_triton(x, torch.zeros_like(offsets), weight, bias)
    want = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    assert_close(out, want, torch.float32)


@pytest.mark.parametrize("k", [(1, 3), (5, 5)])
def test_interpreter_other_odd_kernels(interpreter, k):
    check(*make_inputs(1, 5, 4, (6, 7), torch.float32, k=k, seed=7), torch.float32)


def test_interpreter_without_bias_strided_inputs_and_packed_weight(interpreter):
    x, offsets, weight, _ = make_inputs(2, 6, 5, (5, 7), torch.float32, seed=8, bias=False)
    wide = torch.cat((x, x), 1)[:, 3:9]  # a channel slice of a larger map
    off16 = offsets.half()  # offsets in another float dtype than x
    check(wide, off16, weight, None, torch.float32)
    check(x.to(memory_format=torch.channels_last), offsets, weight, None, torch.float32)
    check(x, offsets, weight, None, torch.float32, packed_weight=pack_weight(weight))


def test_interpreter_batch_items_are_independent(interpreter):
    x, offsets, weight, bias = make_inputs(3, 5, 4, (4, 6), torch.float32, seed=9)
    both = deform_conv2d_triton(x, offsets, weight, bias)
    alone = deform_conv2d_triton(x[2:], offsets[2:], weight, bias)
    assert torch.equal(both[2:], alone)


def test_rejects_bad_shapes_and_dtypes(interpreter):
    x, offsets, weight, bias = make_inputs(1, 4, 3, (5, 5), torch.float32)
    with pytest.raises(ValueError, match="offsets"):
        deform_conv2d_triton(x, offsets[:, :16], weight, bias)
    with pytest.raises(ValueError, match="odd KH and KW"):
        deform_conv2d_triton(x, offsets, torch.zeros(3, 4, 2, 2), bias)
    with pytest.raises(ValueError, match="does not fit"):
        deform_conv2d_triton(x, offsets, weight[:, :3], bias)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        deform_conv2d_triton(x, offsets, weight.half(), bias)
    with pytest.raises(ValueError, match="packed_weight"):
        deform_conv2d_triton(x, offsets, weight, bias, packed_weight=weight)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset_scale", [0.5, 4.0])
def test_cuda_real_shape(dtype, offset_scale):
    """The decoder's shape: 256 -> 256 channels on the 1/8 map of a 480p frame (60×108)."""
    check(*make_inputs(1, 256, 256, (60, 108), dtype, "cuda", offset_scale, seed=11), dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_odd_shape_and_far_samples():
    x, offsets, weight, bias = make_inputs(2, 37, 70, (33, 41), torch.float16, "cuda", 8.0, seed=12)
    offsets[:, ::5] *= 1e4
    check(x, offsets, weight, bias, torch.float16)
