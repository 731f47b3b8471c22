"""Triton, when installed, and what every kernel launcher needs around it.

Triton is an optional extra: the plain-torch references in this package must import
and run without it. When it is missing, ``triton`` and ``tl`` below are stand-ins
that let the kernel definitions be evaluated (``@triton.jit`` returns the function
unchanged, ``tl.constexpr`` is a plain annotation) and make every launch fail with
one clear message.

Where kernels run: CUDA tensors always; CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests run them on machines without a GPU.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # the optional extra is not installed
    HAVE_TRITON = False

    class _MissingTriton:
        """Enough of ``triton`` / ``triton.language`` for kernel modules to import."""

        constexpr = object

        @staticmethod
        def jit(fn: Any = None, **_: Any) -> Any:
            return fn if fn is not None else (lambda f: f)

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(
                "Triton is not installed: install it with `pip install hodor-engine[triton]`, "
                "or use the torch kernels (impl='torch')"
            )

    triton = _MissingTriton()  # type: ignore[assignment]
    tl = _MissingTriton()  # type: ignore[assignment]

__all__ = ["HAVE_TRITON", "triton", "tl", "interpreting", "launchable", "dot_precision", "next_pow2", "cdiv"]

LOG2E = math.log2(math.e)

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is switched on (read at call time, as Triton does)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


_interpreted: dict[Any, Any] = {}


def launchable(kernel: Any, device: torch.device) -> Any:
    """The kernel object to launch for tensors on ``device``.

    Kernels decorated while ``TRITON_INTERPRET`` was unset are compiled kernels; if the
    interpreter has been switched on since (a test module importing after another one),
    CPU tensors get an interpreted copy of the same function, so import order does not
    decide whether a test can run.
    """
    if not HAVE_TRITON:
        raise RuntimeError(
            "Triton is not installed: install it with `pip install hodor-engine[triton]`, "
            "or use the torch kernels (impl='torch')"
        )
    if device.type == "cuda":
        return kernel
    if device.type != "cpu" or not interpreting():
        raise RuntimeError(
            f"the Triton kernels run on CUDA tensors (got {device.type}); on the CPU use impl='torch', "
            "or set TRITON_INTERPRET=1 to run them in Triton's (slow) interpreter"
        )
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        return kernel
    if kernel not in _interpreted:
        _interpreted[kernel] = InterpretedFunction(kernel.fn)
    return _interpreted[kernel]


def check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name}: the Triton kernels take float32, float16 or bfloat16, got {t.dtype}")


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: full fp32 products for fp32 inputs (TF32 would miss the
    1e-5 tolerance by two orders of magnitude); half types run on tensor cores anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors on ``device`` (a nominal 8 for the interpreter, so CPU runs
    still exercise the split paths)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8
