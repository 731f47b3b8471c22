"""The four descriptor computations of HODOR, as plain tensor functions.

Each one is a single, self-contained computation on projected tensors so that a
fused kernel can replace it one-for-one: the network modules call these
functions and nothing else for the descriptor <-> pixel interactions.

All functions are written with shape-generic tensor operations only (no
``nonzero``, no Python branches on tensor values) so that they trace and export
for any batch, spatial size, object count and history length, and they keep the
dtype of their inputs so that the model runs in half precision.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C / heads]``."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``[B, heads, N, D]`` -> ``[B, N, heads * D]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def soft_masked_attention(
    query: Tensor, key: Tensor, value: Tensor, soft_mask: Tensor, mask_scales: Tensor
) -> Tensor:
    """Descriptor -> pixel attention of the encoder, biased by each descriptor's soft mask.

    For head ``h``: ``softmax(q·k / sqrt(D) - (1 - mask) * mask_scales[h]) · v``.

    Args:
        query: ``[B, Q, C]`` projected descriptors (not yet scaled).
        key: ``[B, S, C]`` projected pixel keys (S = H*W of the 1/8 map).
        value: ``[B, S, C]`` projected pixel values.
        soft_mask: ``[B, Q, S]`` mask probabilities in [0, 1], one row per descriptor.
        mask_scales: ``[heads]`` penalty given to a pixel outside the mask, per head.

    Returns:
        ``[B, Q, C]``, heads concatenated, before the output projection.
    """
    num_heads = mask_scales.shape[0]
    head_dim = query.shape[-1] // num_heads
    q = _split_heads(query, num_heads) / math.sqrt(head_dim)  # [B, h, Q, D]
    k = _split_heads(key, num_heads)  # [B, h, S, D]
    v = _split_heads(value, num_heads)
    logits = torch.matmul(q, k.transpose(-2, -1))  # [B, h, Q, S]
    penalty = (1.0 - soft_mask).unsqueeze(1) * mask_scales.to(logits.dtype)[None, :, None, None]
    weights = (logits - penalty).softmax(-1)
    return _merge_heads(torch.matmul(weights, v))


def pixel_descriptor_attention(
    query: Tensor, key: Tensor, value: Tensor, key_invalid: Tensor, num_heads: int
) -> Tensor:
    """Pixel -> descriptor attention of the decoder: every pixel attends to the descriptor history.

    Args:
        query: ``[B, P, C]`` projected pixel queries (P = H*W of the 1/8 map), not yet scaled.
        key: ``[B, S, C]`` projected descriptor keys (S = (I + Qb) * T history entries).
        value: ``[B, S, C]`` projected descriptor values.
        key_invalid: ``[B, S]`` bool, True where a history entry must be ignored (logit -inf).
        num_heads: number of attention heads.

    Returns:
        ``[B, P, C]``, heads concatenated (the decoder has no output projection).
    """
    head_dim = query.shape[-1] // num_heads
    q = _split_heads(query, num_heads) / math.sqrt(head_dim)  # [B, h, P, D]
    k = _split_heads(key, num_heads)  # [B, h, S, D]
    v = _split_heads(value, num_heads)
    logits = torch.matmul(q, k.transpose(-2, -1))  # [B, h, P, S]
    minus_inf = torch.full_like(logits, float("-inf"))
    logits = torch.where(key_invalid[:, None, None, :], minus_inf, logits)
    return _merge_heads(torch.matmul(logits.softmax(-1), v))


def mask_logits(fmap: Tensor, descriptors: Tensor, invalid: Tensor) -> Tensor:
    """Per-descriptor mask logits: the best match over the history of each descriptor.

    ``max_t (d_t · f) / sqrt(C)``, with invalid history entries excluded (-inf).

    Args:
        fmap: ``[B, C, H, W]`` pixel features (the decoder's 1/4 map).
        descriptors: ``[B, Q, T, C]`` projected descriptors (Q = Qb + I), T history slots.
        invalid: ``[B, Q, T]`` bool, True for history entries to ignore.

    Returns:
        ``[B, Q, H, W]`` logits (-inf where every entry of a descriptor is invalid).
    """
    b, c, h, w = fmap.shape
    q, t = descriptors.shape[1], descriptors.shape[2]
    # One [Q*T, C] x [C, HW] product per batch item: broadcasting the map over Q would copy it.
    prod = torch.matmul(descriptors.flatten(1, 2), fmap.flatten(2)) / math.sqrt(c)  # [B, Q*T, HW]
    prod = prod.unflatten(1, (q, t))  # [B, Q, T, HW]
    prod = torch.where(invalid.unsqueeze(-1), torch.full_like(prod, float("-inf")), prod)
    return prod.amax(2).unflatten(-1, (h, w))


def masked_avg_pool(fmap: Tensor, masks: Tensor, num_background: int) -> Tensor:
    """Mean feature of the pixels where each mask is > 0.5 (descriptor initialisation).

    A mask with no such pixel falls back to the feature at its arg-max pixel (the
    first pixel of an all-zero mask) if it is an object's (row >= ``num_background``),
    and to a zero vector if it is a background cell's.

    Args:
        fmap: ``[B, C, H, W]`` features.
        masks: ``[B, M, H, W]`` mask probabilities, background cells first.
        num_background: how many leading rows of ``masks`` are background cells.

    Returns:
        ``[B, M, C]`` pooled features.
    """
    feats = fmap.flatten(2).transpose(1, 2)  # [B, HW, C]
    flat = masks.flatten(2)  # [B, M, HW]
    selected = (flat > 0.5).to(feats.dtype)
    count = selected.sum(-1, keepdim=True)  # [B, M, 1]
    pixel = torch.arange(flat.shape[-1], device=flat.device)
    at_argmax = (pixel == flat.argmax(-1, keepdim=True)).to(feats.dtype)  # one-hot [B, M, HW]
    is_background = (torch.arange(flat.shape[1], device=flat.device) < num_background)[:, None]  # [M, 1]
    # An empty background cell keeps its all-zero row: zero sum, and so zero mean.
    selected = torch.where((count > 0) | is_background, selected, at_argmax)
    return torch.matmul(selected, feats) / count.clamp(min=1)
