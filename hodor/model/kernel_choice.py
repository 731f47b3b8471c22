"""Which implementation computes the model's fused computations: the four descriptor
computations and the decoder's deformable convolutions.

Both live in :mod:`hodor.kernels`, one reference per computation: ``"torch"`` runs the plain
torch references (``*_reference``: any device and dtype, and traceable, so they are what ONNX
export sees), ``"triton"`` the fused kernels (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``). Triton is optional: without it the kernel modules still import (their
launchers then say how to install it), so the model imports, runs and exports anywhere.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import torch

from hodor.errors import HodorError

KernelImpl = Literal["torch", "triton"]
KERNEL_CHOICES: tuple[str, ...] = ("torch", "triton")

_NOT_INSTALLED = "Triton is not installed (pip install 'hodor-engine[triton]')"


class SelectsKernels:
    """Mixin for the modules that call one of the fused computations.

    ``kernels`` is a plain attribute, not a buffer: it is no part of the checkpoint.
    :meth:`hodor.model.HodorNet.set_kernels` sets it on every such module at once.
    """

    kernels: KernelImpl = "torch"


def fused_kernels() -> ModuleType:
    """:mod:`hodor.kernels`, whose dispatchers run the fused kernels with ``impl="triton"``."""
    import hodor.kernels

    return hodor.kernels


def fused_deform_conv() -> ModuleType:
    """:mod:`hodor.kernels.deform_conv`, imported on first use."""
    import hodor.kernels.deform_conv

    return hodor.kernels.deform_conv


def check_kernels(impl: str) -> None:
    """Raise ``ValueError`` for an unknown choice, ``HodorError`` for ``"triton"`` without Triton."""
    if impl not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {impl!r}")
    if impl == "triton" and not fused_kernels().HAVE_TRITON:
        raise HodorError(f"the fused kernels need Triton: {_NOT_INSTALLED}")


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the fused kernels cannot run on ``device`` in this process, or None when they can."""
    kernels = fused_kernels()
    if not kernels.HAVE_TRITON:
        return _NOT_INSTALLED
    if device.type == "cuda":
        return None
    from hodor.kernels._triton import interpreting

    if device.type == "cpu" and interpreting():
        return None
    return (
        f"the Triton kernels run on CUDA GPUs, not on the {device.type} "
        "(on the CPU only in Triton's slow interpreter, with TRITON_INTERPRET=1 set)"
    )
