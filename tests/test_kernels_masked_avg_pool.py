"""Masked average pooling: Triton kernel against the torch reference, fallbacks included.

CPU: small shapes in Triton's interpreter. CUDA: HODOR's real shapes (60×108 at 1/8;
9 background cells + 1, 4, 16 objects). Relative error as in
:mod:`hodor.kernels.testing`; the fallback rows are also checked exactly.
"""


import pytest
import torch

from hodor.kernels import masked_avg_pool, masked_avg_pool_reference
from hodor.kernels.masked_avg_pool import MAX_ROWS, masked_avg_pool_triton
from hodor.kernels.testing import assert_close
from tests.triton_interpreter import skip_on_interpreter

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

C, QB = 256, 9
NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"


def make_inputs(hw, num_objects, dtype, device, seed=0, num_bg=QB):
    """Features and [background, objects] masks with every edge case among the rows."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    f = torch.randn(1, C, h, w, generator=g)
    # Background: a grid cut of soft masks; cell 0 empty (falls back to zeros), cell 1 full.
    bg = torch.rand(1, num_bg, h, w, generator=g) * 0.4
    for i in range(num_bg):
        bg[0, i, (i * h) // num_bg : ((i + 1) * h) // num_bg] += 0.5
    bg[0, 0] = 0.0
    bg[0, 1] = 1.0
    fg = torch.rand(1, num_objects, h, w, generator=g)
    fg[0, 0] = 0.0  # all zeros: falls back to the first pixel
    if num_objects > 1:
        fg[0, 1] = 1.0  # all ones: the mean of every pixel
    if num_objects > 2:
        fg[0, 2] = 0.3  # nothing above 0.5; the maximum, twice: the first of the two wins
        fg[0, 2, h // 2, w // 3] = 0.45
        fg[0, 2, h - 1, w - 1] = 0.45
    if num_objects > 3:
        fg[0, 3] = 0.5  # exactly 0.5 is not inside
        fg[0, 3, 1, 2] = 0.5001
    masks = torch.cat((bg, fg), 1)
    return f.to(device=device, dtype=dtype), masks.to(device)


def check(f, masks, num_bg, dtype, **kwargs):
    out = masked_avg_pool_triton(f, masks, num_bg, **kwargs)
    assert out.shape == (f.shape[0], masks.shape[1], C) and out.dtype == dtype
    ref = masked_avg_pool_reference(f.double(), masks, num_bg)
    assert_close(out, ref, dtype)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_objects", [1, 4])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_interpreter(interpreter, dtype, num_objects, num_splits):
    skip_on_interpreter(dtype)
    f, masks = make_inputs((17, 23), num_objects, dtype, "cpu", seed=num_objects)
    check(f, masks, QB, dtype, num_splits=num_splits)


def test_interpreter_fallbacks_exact(interpreter):
    h, w = 13, 19
    f, masks = make_inputs((h, w), 4, torch.float32, "cpu")
    out = check(f, masks, QB, torch.float32, num_splits=2)[0]
    flat = f[0].reshape(C, -1)
    assert torch.equal(out[0], torch.zeros(C))  # empty background cell
    assert torch.allclose(out[1], flat.double().mean(1).float(), rtol=0, atol=1e-6)  # full background cell
    assert torch.equal(out[QB], flat[:, 0])  # all-zero object: first pixel
    assert torch.allclose(out[QB + 1], flat.double().mean(1).float(), rtol=0, atol=1e-6)
    assert torch.equal(out[QB + 2], flat[:, (h // 2) * w + w // 3])  # first of two equal maxima
    assert torch.equal(out[QB + 3], flat[:, 1 * w + 2])  # only the pixel above 0.5


def test_interpreter_more_rows_than_one_launch(interpreter):
    # Rows beyond the first launch: the background/object split must follow the chunking.
    num_bg = MAX_ROWS + 6  # the boundary falls inside the second launch
    f, masks = make_inputs((9, 11), 5, torch.float32, "cpu", num_bg=num_bg)
    check(f, masks, num_bg, torch.float32, num_splits=2)


def test_interpreter_only_background_or_only_objects(interpreter):
    f, masks = make_inputs((10, 10), 3, torch.float32, "cpu")
    masks[0, :] = 0.0
    out_bg = check(f, masks, masks.shape[1], torch.float32)
    out_fg = check(f, masks, 0, torch.float32)
    assert torch.equal(out_bg, torch.zeros_like(out_bg))
    assert torch.equal(out_fg[0], f[0].reshape(C, -1)[:, 0].expand_as(out_fg[0]))


def test_interpreter_half_masks_and_flat_inputs(interpreter):
    f, masks = make_inputs((12, 14), 2, torch.float16, "cpu")
    check(f.flatten(2), masks.half().flatten(2), QB, torch.float16)


def test_dispatcher_picks_triton(interpreter):
    f, masks = make_inputs((8, 9), 2, torch.float32, "cpu")
    a = masked_avg_pool(f, masks, QB, impl="triton")
    b = masked_avg_pool(f, masks, QB, impl="torch")
    assert_close(a, b.double(), torch.float32)


@pytest.mark.slow
def test_interpreter_real_shape(interpreter):
    """HODOR's 1/8 map at min_dim 480 (60×108), 4 objects, fp32, heuristic pixel ranges."""
    f, masks = make_inputs((60, 108), 4, torch.float32, "cpu", seed=7)
    check(f, masks, QB, torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_objects", [1, 4, 16])
def test_cuda_real_shapes(dtype, num_objects):
    f, masks = make_inputs((60, 108), num_objects, dtype, "cuda", seed=num_objects)
    check(f, masks, QB, dtype)
