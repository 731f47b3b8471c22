"""Pixel→descriptor attention: Triton kernel against the torch reference.

CPU: small shapes in Triton's interpreter. CUDA: HODOR's real shapes (60×108 pixels;
keys = (9 background + 1, 4, 16 objects) × history 1 and 8).
Relative error as in :mod:`hodor.kernels.testing`.
"""


import pytest
import torch

from hodor.kernels import pixel_descriptor_attention, pixel_descriptor_attention_reference
from hodor.kernels.pixel_descriptor_attention import pixel_descriptor_attention_triton
from hodor.kernels.testing import assert_close
from tests.triton_interpreter import skip_on_interpreter

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

C, H, QB = 256, 8, 9
NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"


def history_invalid(num_objects: int, history: int, pattern: str, g: torch.Generator) -> torch.Tensor:
    """``[1, (I + Qb)·T]`` bool in the decoder's key order: objects' entries, then background's."""
    fg = torch.zeros(num_objects, history, dtype=torch.bool)
    bg = torch.zeros(QB, history, dtype=torch.bool)
    if pattern == "decode":
        # As at a decode step: the current slot holds no background, and only some objects.
        bg[:, -1] = True
        fg[:, -1] = torch.rand(num_objects, generator=g) < 0.5
    elif pattern == "random":
        fg = torch.rand(num_objects, history, generator=g) < 0.4
        bg = torch.rand(QB, history, generator=g) < 0.4
    elif pattern == "one-valid":
        fg[:] = True
        bg[:] = True
        bg[QB // 2, 0] = False
    elif pattern != "none":
        raise ValueError(pattern)
    return torch.cat((fg.flatten(), bg.flatten()))[None]


def make_inputs(n, num_objects, history, dtype, device, pattern="decode", seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    nk = (num_objects + QB) * history
    q = torch.randn(batch, n, C, generator=g)
    k = torch.randn(batch, nk, C, generator=g)
    v = torch.randn(batch, nk, C, generator=g)
    invalid = torch.cat([history_invalid(num_objects, history, pattern, g) for _ in range(batch)])
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)] + [invalid.to(device)]


def check(inputs, dtype, **kwargs):
    q, k, v, invalid = inputs
    out = pixel_descriptor_attention_triton(q, k, v, invalid, H, **kwargs)
    assert out.shape == q.shape and out.dtype == dtype
    ref = pixel_descriptor_attention_reference(q.double(), k.double(), v.double(), invalid, H)
    return assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("num_objects", "history"), [(1, 1), (4, 3), (1, 8)])
def test_interpreter(interpreter, dtype, num_objects, history):
    skip_on_interpreter(dtype)
    check(make_inputs(333, num_objects, history, dtype, "cpu", seed=history), dtype)


@pytest.mark.parametrize("pattern", ["none", "random", "one-valid"])
def test_interpreter_invalid_patterns(interpreter, pattern):
    # Key tiles of 16 over 65 keys: the one valid key sits in a later tile, after all-invalid ones.
    check(make_inputs(200, 4, 5, torch.float32, "cpu", pattern=pattern), torch.float32, block_k=16)


def test_interpreter_all_invalid_gives_zeros(interpreter):
    q, k, v, invalid = make_inputs(70, 1, 2, torch.float32, "cpu")
    invalid[:] = True
    out = pixel_descriptor_attention_triton(q, k, v, invalid, H)
    ref = pixel_descriptor_attention_reference(q, k, v, invalid, H)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(ref, torch.zeros_like(ref))


def test_interpreter_batch_and_strided(interpreter):
    q, k, v, invalid = make_inputs(150, 4, 2, torch.float32, "cpu", pattern="random", batch=2)
    kv = torch.cat((k, v), -1)
    check([q, kv[..., :C], kv[..., C:], invalid], torch.float32)


def test_dispatcher_picks_triton(interpreter):
    q, k, v, invalid = make_inputs(100, 1, 2, torch.float32, "cpu")
    a = pixel_descriptor_attention(q, k, v, invalid, impl="triton")
    b = pixel_descriptor_attention(q, k, v, invalid, impl="torch")
    assert_close(a, b.double(), torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_objects", [1, 4, 16])
@pytest.mark.parametrize("history", [1, 8])
def test_cuda_real_shapes(dtype, num_objects, history):
    check(make_inputs(60 * 108, num_objects, history, dtype, "cuda", seed=num_objects), dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_one_valid_key():
    check(make_inputs(60 * 108, 16, 8, torch.float16, "cuda", pattern="one-valid"), torch.float16)
