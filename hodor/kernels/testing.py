"""How a kernel's output is judged against its reference (tests and benchmarks share it).

Relative error (:func:`hodor.accuracy.relative_error`), with ``ref`` the reference evaluated
in float64 on the *same* (already rounded) inputs, so only the kernel's own arithmetic is
measured. Limits per input dtype: fp32 1e-5, fp16 5e-3, bf16 2e-2.
"""

from __future__ import annotations

import functools
import os

import torch

from hodor.accuracy import mismatch, relative_error
from hodor.kernels._triton import HAVE_TRITON, launchable, tl, triton

TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> float:
    """Assert ``relative_error(out, ref) <= TOLERANCE[dtype]``; returns the error."""
    err = relative_error(out, ref)
    tol = TOLERANCE[dtype]
    if not err <= tol:
        why = mismatch(out, ref) or f"relative error {err:.3g} > {tol:g}"
        raise AssertionError(f"{what or 'output'}: {why} ({dtype})")
    return err


@functools.cache
def interpreter_bf16_dot_works() -> bool:
    """Whether Triton's CPU interpreter computes a bf16 ``tl.dot`` correctly.

    Triton 3.9's interpreter keeps bf16 tensors as raw uint16 (numpy has no bfloat16) and
    hands them to ``numpy.matmul`` as integers, so bf16 products come out as garbage; the
    kernels' bf16 paths can then only be checked on CUDA. Probed rather than assumed, so
    the tests pick up a fixed interpreter by themselves.
    """
    if not HAVE_TRITON:
        return False
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        a = torch.eye(16, dtype=torch.bfloat16) * 2
        out = torch.empty(16, 16, dtype=torch.float32)
        launchable(_bf16_dot_probe_kernel, torch.device("cpu"))[(1,)](a, a, out)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return torch.equal(out, torch.eye(16) * 4)


def interpreter_skip_reason(dtype: torch.dtype) -> str | None:
    """Why a CPU (interpreter) check in ``dtype`` cannot run, or None if it can."""
    if dtype == torch.bfloat16 and not interpreter_bf16_dot_works():
        return (
            "Triton's interpreter computes bf16 tl.dot on the raw uint16 bits (numpy has no "
            "bfloat16), so the bf16 kernels are checked on CUDA only"
        )
    return None


@triton.jit
def _bf16_dot_probe_kernel(a_ptr, b_ptr, out_ptr):
    r = tl.arange(0, 16)
    idx = r[:, None] * 16 + r[None, :]
    tl.store(out_ptr + idx, tl.dot(tl.load(a_ptr + idx), tl.load(b_ptr + idx)))
