"""Soft-masked descriptor attention: Triton kernel against the torch reference.

CPU: small shapes in Triton's interpreter. CUDA: HODOR's real shapes (1/8 map of a
480-pixel-high frame, 60×108; 9 background cells + 1, 4, 16 objects).
Relative error as in :mod:`hodor.kernels.testing`.
"""


import pytest
import torch

from hodor.kernels import soft_masked_attention, soft_masked_attention_reference
from hodor.kernels.soft_masked_attention import MAX_QUERIES, soft_masked_attention_triton
from hodor.kernels.testing import assert_close
from tests.triton_interpreter import skip_on_interpreter

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

C, H = 256, 8
SCALES = torch.tensor([32.0, 32.0, 16.0, 16.0, 8.0, 8.0, 4.0, 4.0])
NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"


def make_inputs(b, q, n, dtype, device, seed=0, masks="random"):
    g = torch.Generator().manual_seed(seed)
    qq = torch.randn(b, q, C, generator=g)
    kk = torch.randn(b, n, C, generator=g)
    vv = torch.randn(b, n, C, generator=g)
    if masks == "random":
        mask = torch.rand(b, q, n, generator=g)
    elif masks == "binary":
        mask = (torch.rand(b, q, n, generator=g) > 0.7).float()
    else:
        raise ValueError(masks)
    # Edge rows: the first descriptor sees nothing of itself, the last one everything.
    mask[:, 0] = 0.0
    mask[:, -1] = 1.0
    return [t.to(device=device, dtype=dtype) for t in (qq, kk, vv)] + [mask.to(device), SCALES.to(device)]


def check(inputs, dtype, **kwargs):
    q, k, v, mask, scale = inputs
    out = soft_masked_attention_triton(q, k, v, mask, scale, H, **kwargs)
    assert out.shape == q.shape and out.dtype == dtype
    ref = soft_masked_attention_reference(
        q.double(), k.double(), v.double(), mask.double(), scale.double(), H
    )
    return assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_objects", [1, 4])
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_interpreter(interpreter, dtype, num_objects, num_splits):
    skip_on_interpreter(dtype)
    check(make_inputs(1, 9 + num_objects, 517, dtype, "cpu", seed=num_objects), dtype, num_splits=num_splits)


def test_interpreter_batch_binary_masks(interpreter):
    check(make_inputs(2, 10, 300, torch.float32, "cpu", masks="binary"), torch.float32, num_splits=2)


def test_interpreter_single_descriptor_and_ragged_tile(interpreter):
    # One descriptor, pixel count not a multiple of any tile, smallest tile.
    check(make_inputs(1, 1, 203, torch.float32, "cpu"), torch.float32, block_n=16, num_splits=4)


def test_interpreter_more_descriptors_than_one_launch(interpreter):
    check(make_inputs(1, MAX_QUERIES + 6, 96, torch.float16, "cpu"), torch.float16, num_splits=2)


def test_interpreter_strided_inputs(interpreter):
    q, k, v, mask, scale = make_inputs(1, 12, 200, torch.float32, "cpu")
    kv = torch.cat((k, v), -1)  # k and v as channel slices of one tensor: row stride 2C
    mask_t = mask.transpose(1, 2).contiguous().transpose(1, 2)  # pixel-major mask
    check([q, kv[..., :C], kv[..., C:], mask_t, scale], torch.float32, num_splits=2)


def test_dispatcher_picks_triton(interpreter):
    q, k, v, mask, scale = make_inputs(1, 10, 150, torch.float32, "cpu")
    a = soft_masked_attention(q, k, v, mask, scale, impl="triton")
    b = soft_masked_attention(q, k, v, mask, scale, impl="torch")
    assert_close(a, b.double(), torch.float32)
    assert torch.equal(b, soft_masked_attention_reference(q, k, v, mask, scale))


@pytest.mark.slow
def test_interpreter_real_shape(interpreter):
    """HODOR's 1/8 map at min_dim 480 (60×108) with 4 objects, fp32, heuristic pixel ranges."""
    check(make_inputs(1, 9 + 4, 60 * 108, torch.float32, "cpu", seed=7), torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_objects", [1, 4, 16])
def test_cuda_real_shapes(dtype, num_objects):
    check(make_inputs(1, 9 + num_objects, 60 * 108, dtype, "cuda", seed=num_objects), dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("num_splits", [1, 7])
def test_cuda_split_paths(num_splits):
    check(make_inputs(1, 13, 60 * 108, torch.float16, "cuda"), torch.float16, num_splits=num_splits)
