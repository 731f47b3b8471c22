"""The descriptor cross-attentions and their neighbours, as plain torch or fused Triton.

Each function takes ``impl="torch"`` (the plain-torch reference: any device, any float
dtype, traceable for export) or ``impl="triton"`` (the fused kernel: CUDA tensors, or
CPU tensors under ``TRITON_INTERPRET=1``; fp32, fp16, bf16 with fp32 accumulation).
Both compute the same function; shapes and layouts are documented in each module.

Layout throughout: heads are packed in the channel axis, ``C = H·D`` with channel
``h·D + d`` (what a ``Linear`` produces), so no caller needs to transpose.

The functions below share their names with the modules that define the kernels:
``hodor.kernels.mask_logits`` is the function; reach a module's other names with
``from hodor.kernels.mask_logits import mask_logits_config``.
"""

from __future__ import annotations

from typing import Literal

import torch

from hodor.kernels._triton import HAVE_TRITON
from hodor.kernels.mask_logits import mask_logits_reference, mask_logits_triton
from hodor.kernels.masked_avg_pool import masked_avg_pool_reference, masked_avg_pool_triton
from hodor.kernels.pixel_descriptor_attention import (
    pixel_descriptor_attention_reference,
    pixel_descriptor_attention_triton,
)
from hodor.kernels.soft_masked_attention import soft_masked_attention_reference, soft_masked_attention_triton

Impl = Literal["torch", "triton"]

__all__ = [
    "HAVE_TRITON",
    "Impl",
    "mask_logits",
    "masked_avg_pool",
    "pixel_descriptor_attention",
    "soft_masked_attention",
    "mask_logits_reference",
    "masked_avg_pool_reference",
    "pixel_descriptor_attention_reference",
    "soft_masked_attention_reference",
    "mask_logits_triton",
    "masked_avg_pool_triton",
    "pixel_descriptor_attention_triton",
    "soft_masked_attention_triton",
]


def _check_impl(impl: str) -> None:
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")


def soft_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    num_heads: int = 8,
    *,
    impl: Impl = "torch",
) -> torch.Tensor:
    """Encoder cross-attention: ``q [B,Q,C]``, ``k, v [B,N,C]``, ``mask [B,Q,N]`` in [0, 1],
    ``scale [H]`` -> ``[B,Q,C]`` (before the output projection). See
    :mod:`hodor.kernels.soft_masked_attention`."""
    _check_impl(impl)
    if impl == "triton":
        return soft_masked_attention_triton(q, k, v, mask, scale, num_heads)
    return soft_masked_attention_reference(q, k, v, mask, scale, num_heads)


def pixel_descriptor_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_invalid: torch.Tensor,
    num_heads: int = 8,
    *,
    impl: Impl = "torch",
) -> torch.Tensor:
    """Decoder cross-attention: pixel queries ``q [B,N,C]``, descriptor keys and values
    ``k, v [B,K,C]`` (objects' history first, then background's), ``key_invalid [B,K]``
    bool -> ``[B,N,C]``. See :mod:`hodor.kernels.pixel_descriptor_attention`."""
    _check_impl(impl)
    if impl == "triton":
        return pixel_descriptor_attention_triton(q, k, v, key_invalid, num_heads)
    return pixel_descriptor_attention_reference(q, k, v, key_invalid, num_heads)


def mask_logits(
    features: torch.Tensor,
    descriptors: torch.Tensor,
    invalid: torch.Tensor,
    catch_all: torch.Tensor | None = None,
    *,
    impl: Impl = "torch",
) -> torch.Tensor:
    """``features [B,C,H,W]``, ``descriptors [B,Qd,T,C]``, ``invalid [B,Qd,T]`` bool ->
    ``[B,Qd,H,W]`` = max over valid t of d·f/√C; with ``catch_all [B,1,H,W]``,
    ``[B,1+Qd,H,W]`` with it first. See :mod:`hodor.kernels.mask_logits`."""
    _check_impl(impl)
    if impl == "triton":
        return mask_logits_triton(features, descriptors, invalid, catch_all)
    return mask_logits_reference(features, descriptors, invalid, catch_all)


def masked_avg_pool(
    features: torch.Tensor, masks: torch.Tensor, num_background: int, *, impl: Impl = "torch"
) -> torch.Tensor:
    """``features [B,C,*S]``, ``masks [B,M,*S]`` -> ``[B,M,C]``: mean feature where the mask
    is > 0.5; with none, an object row (``m >= num_background``) takes its arg-max pixel and
    a background row zeros. See :mod:`hodor.kernels.masked_avg_pool`."""
    _check_impl(impl)
    if impl == "triton":
        return masked_avg_pool_triton(features, masks, num_background)
    return masked_avg_pool_reference(features, masks, num_background)
