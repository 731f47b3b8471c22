"""Mask logits: Triton kernel against the torch reference.

CPU: small shapes in Triton's interpreter. CUDA: HODOR's real shapes (the 1/4 map of
a 480-pixel-high frame, 120×216; 9 background cells + 1, 4, 16 objects; history 1
and 8). Relative error as in :mod:`hodor.kernels.testing`; −∞ logits (no valid
history entry) must match exactly.
"""


import pytest
import torch

from hodor.kernels import mask_logits, mask_logits_reference
from hodor.kernels.mask_logits import mask_logits_triton
from hodor.kernels.testing import assert_close
from tests.triton_interpreter import skip_on_interpreter

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

C, QB = 256, 9
NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"


def make_inputs(hw, num_objects, history, dtype, device, pattern="decode", seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    qd = QB + num_objects
    f = torch.randn(batch, C, *hw, generator=g)
    d = torch.randn(batch, qd, history, C, generator=g)
    catch_all = torch.randn(batch, 1, *hw, generator=g)
    invalid = torch.zeros(batch, qd, history, dtype=torch.bool)
    if pattern == "decode":
        invalid[:, :QB, -1] = True  # background is never stored for the current slot
        if history > 1:
            invalid[:, QB:, -1] = torch.rand(batch, num_objects, generator=g) < 0.5
    elif pattern == "random":
        invalid = torch.rand(batch, qd, history, generator=g) < 0.5
        invalid[:, 1] = True  # a descriptor with no valid entry: −∞ everywhere
    elif pattern == "one-valid":
        invalid[:] = True
        invalid[:, :, history // 2] = False
    elif pattern != "none":
        raise ValueError(pattern)
    tensors = [t.to(device=device, dtype=dtype) for t in (f, d, catch_all)]
    return tensors + [invalid.to(device)]


def check(inputs, dtype, with_catch_all=True):
    f, d, catch_all, invalid = inputs
    ca = catch_all if with_catch_all else None
    out = mask_logits_triton(f, d, invalid, ca)
    assert out.dtype == dtype
    ref = mask_logits_reference(f.double(), d.double(), invalid, None if ca is None else ca.double())
    return assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("num_objects", "history"), [(1, 1), (4, 3), (1, 8)])
def test_interpreter(interpreter, dtype, num_objects, history):
    skip_on_interpreter(dtype)
    check(make_inputs((15, 21), num_objects, history, dtype, "cpu", seed=history), dtype)


@pytest.mark.parametrize("pattern", ["none", "random", "one-valid"])
def test_interpreter_invalid_patterns(interpreter, pattern):
    check(make_inputs((11, 13), 4, 5, torch.float32, "cpu", pattern=pattern), torch.float32)


def test_interpreter_descriptor_without_history_is_minus_inf(interpreter):
    f, d, catch_all, invalid = make_inputs((9, 10), 1, 2, torch.float32, "cpu")
    invalid[0, QB] = True  # the object
    out = mask_logits_triton(f, d, invalid, catch_all)
    assert torch.equal(out[0, 0], catch_all[0, 0])
    assert torch.isneginf(out[0, 1 + QB]).all() and torch.isfinite(out[0, 1 : 1 + QB]).all()


def test_interpreter_without_catch_all_and_long_history(interpreter):
    # 17 slots (window 16): padded to 32 per descriptor, two descriptors per program.
    check(
        make_inputs((7, 9), 2, 17, torch.float16, "cpu", pattern="random"),
        torch.float16,
        with_catch_all=False,
    )


def test_interpreter_batch_and_strided(interpreter):
    f, d, catch_all, invalid = make_inputs((8, 12), 4, 2, torch.float32, "cpu", pattern="random", batch=2)
    d_strided = torch.cat((d, d), -1)[..., :C]  # unit channel stride, wider rows
    f_strided = torch.cat((f, f), 1)[:, C:]  # a channel slice of a larger map
    check([f_strided, d_strided, catch_all, invalid], torch.float32)


def test_dispatcher_picks_triton(interpreter):
    f, d, catch_all, invalid = make_inputs((6, 7), 1, 2, torch.float32, "cpu")
    a = mask_logits(f, d, invalid, catch_all, impl="triton")
    b = mask_logits(f, d, invalid, catch_all, impl="torch")
    assert_close(a, b.double(), torch.float32)


@pytest.mark.slow
def test_interpreter_real_shape(interpreter):
    """HODOR's 1/4 map at min_dim 480 (120×216), 4 objects, history 8, fp32."""
    check(make_inputs((120, 216), 4, 8, torch.float32, "cpu", seed=7), torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_objects", [1, 4, 16])
@pytest.mark.parametrize("history", [1, 8])
def test_cuda_real_shapes(dtype, num_objects, history):
    check(make_inputs((120, 216), num_objects, history, dtype, "cuda", seed=num_objects), dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_one_valid_entry():
    check(make_inputs((120, 216), 16, 8, torch.float16, "cuda", pattern="one-valid"), torch.float16)
