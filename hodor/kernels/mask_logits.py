"""Mask logits (the decoder's last step), torch and Triton.

Each descriptor's logit at a pixel is its best match over the history: the projected
descriptor · pixel feature / √C, maximised over the valid history entries::

    logits[b, q, y, x] = max_{t valid} d[b,q,t]·f[b,:,y,x] / √C      (−∞ if no entry is valid)

``f [B,C,H,W]`` are the decoder's 1/4 features, ``d [B,Qd,T,C]`` the projected
descriptors (``Qd = Qb + I``, background first, as the decoder orders them),
``invalid [B,Qd,T]`` bool. Given the catch-all map ``[B,1,H,W]`` the result is the
decode stage's whole output ``[B,1+Qd,H,W]`` with the catch-all in channel 0;
without it, ``[B,Qd,H,W]``.

The Triton kernel has one program per (descriptor block, pixel tile, batch item):
all ``BLOCK_Q × T`` history rows of its descriptors against the pixel tile in one
``tl.dot`` per channel chunk, then the maximum over each descriptor's rows. The
descriptor-block axis varies fastest in the launch, so the programs sharing a pixel
tile run together and the features come from HBM about once.
"""

from __future__ import annotations

import math

import torch

from hodor.kernels._triton import cdiv, check_dtype, dot_precision, launchable, next_pow2, tl, triton


def mask_logits_reference(
    features: torch.Tensor,
    descriptors: torch.Tensor,
    invalid: torch.Tensor,
    catch_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain-torch mask logits, in the features' dtype: the model's ``"torch"`` kernels and what
    ``hodor-export`` traces.

    Args:
        features: ``[B, C, H, W]`` pixel features.
        descriptors: ``[B, Qd, T, C]`` projected descriptors.
        invalid: ``[B, Qd, T]`` bool, True for history entries to leave out.
        catch_all: optional ``[B, 1, H, W]`` map to put in front.

    Returns:
        ``[B, Qd, H, W]`` (−∞ where every entry of a descriptor is invalid), or
        ``[B, 1+Qd, H, W]`` with ``catch_all`` first.
    """
    b, c, h, w = features.shape
    q, t = descriptors.shape[1], descriptors.shape[2]
    # One [Qd·T, C] × [C, HW] product per batch item: broadcasting the map over Qd would copy it.
    prod = torch.matmul(descriptors.to(features.dtype).flatten(1, 2), features.flatten(2)) / math.sqrt(c)
    prod = prod.unflatten(1, (q, t))  # [B, Qd, T, HW]
    # Invalid entries to −∞ by a [B, Qd, T, 1] bias of 0 / −∞ (as in the pixel attention's reference).
    bias = torch.zeros_like(invalid, dtype=prod.dtype).masked_fill(invalid, float("-inf"))
    prod = prod + bias.unsqueeze(-1)
    logits = prod.amax(2).unflatten(-1, (h, w))
    if catch_all is None:
        return logits
    return torch.cat((catch_all.to(logits.dtype), logits), 1)


@triton.jit
def _mask_logits_kernel(
    f_ptr,
    d_ptr,
    invalid_ptr,
    out_ptr,
    Qd,
    T,
    P,
    channel_offset,
    stride_fb,
    stride_fc,
    stride_db,
    stride_dq,
    stride_dt,
    stride_ib,
    stride_iq,
    stride_it,
    stride_ob,
    stride_oc,
    C: tl.constexpr,
    T_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Descriptors ``[pid0·BLOCK_Q, +BLOCK_Q)`` × pixels ``[pid1·BLOCK_P, +BLOCK_P)`` of batch
    item ``pid2``; rows of the dot are (descriptor, history slot) pairs, ``T_PAD`` per
    descriptor. Features are ``[B, C, P]`` with unit pixel stride; ``invalid`` is bytes."""
    pid_q = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    rows = tl.arange(0, BLOCK_Q * T_PAD)
    qi = pid_q * BLOCK_Q + rows // T_PAD
    ti = rows % T_PAD
    row_ok = (qi < Qd) & (ti < T)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    offs_c = tl.arange(0, BLOCK_C)

    d_rows = d_ptr + b * stride_db + qi * stride_dq + ti * stride_dt  # [R]
    f_cols = f_ptr + b * stride_fb + offs_p  # [BP]
    acc = tl.zeros((BLOCK_Q * T_PAD, BLOCK_P), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        d_t = tl.load(d_rows[:, None] + cc[None, :], mask=row_ok[:, None], other=0.0)  # [R, BC]
        f_t = tl.load(f_cols[None, :] + cc[:, None] * stride_fc, mask=p_ok[None, :], other=0.0)  # [BC, BP]
        acc = tl.dot(d_t.to(f_t.dtype), f_t, acc, input_precision=PRECISION)

    bad = tl.load(invalid_ptr + b * stride_ib + qi * stride_iq + ti * stride_it, mask=row_ok, other=1)
    # SCALE = 1/√C, applied before the maximum as the model does (exact for C = 256).
    acc = tl.where((row_ok & (bad == 0))[:, None], acc * SCALE, float("-inf"))
    logits = tl.max(tl.reshape(acc, (BLOCK_Q, T_PAD, BLOCK_P)), axis=1)  # [BQ, BP]

    oq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    o_ptrs = out_ptr + b * stride_ob + (channel_offset + oq)[:, None] * stride_oc + offs_p[None, :]
    tl.store(o_ptrs, logits.to(out_ptr.dtype.element_ty), mask=(oq < Qd)[:, None] & p_ok[None, :])


def mask_logits_config(history: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and launch options: 64 rows of (descriptor, slot) pairs per dot, i.e.
    ``T_PAD`` slots per descriptor and ``64 / T_PAD`` descriptors (at least one); 64
    pixels; channels in chunks of 64 (32 for fp32, to stay within registers: checked on
    sm_80 and sm_90 cubins, no spills)."""
    t_pad = next_pow2(history)
    return {
        "T_PAD": t_pad,
        "BLOCK_Q": max(1, 64 // t_pad),
        "BLOCK_P": 64,
        "BLOCK_C": 32 if dtype == torch.float32 else 64,
        "num_warps": 4,
    }


MAX_HISTORY = 64
"""History slots the Triton kernel takes in one call."""


def mask_logits_triton(
    features: torch.Tensor,
    descriptors: torch.Tensor,
    invalid: torch.Tensor,
    catch_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused mask logits; same contract as :func:`mask_logits_reference`.

    With ``catch_all`` the output is allocated once as ``[B, 1+Qd, H, W]``, the catch-all
    copied into channel 0 and the kernel writes channels ``1..Qd`` in place. fp32
    accumulation; returns the features' dtype.
    """
    b, c, hgt, wid = features.shape
    _, qd, t, _ = descriptors.shape
    if descriptors.shape != (b, qd, t, c) or invalid.shape != (b, qd, t):
        raise ValueError(
            f"shape mismatch: features {tuple(features.shape)}, descriptors {tuple(descriptors.shape)}, "
            f"invalid {tuple(invalid.shape)} (want [B,C,H,W], [B,Qd,T,C], [B,Qd,T])"
        )
    if catch_all is not None and catch_all.shape != (b, 1, hgt, wid):
        raise ValueError(f"catch_all must be [B,1,H,W] = {(b, 1, hgt, wid)}, got {tuple(catch_all.shape)}")
    if c % 64 or c != next_pow2(c):
        raise ValueError(f"the Triton kernel needs a power-of-two channel count >= 64, got {c}")
    if t > MAX_HISTORY:
        raise ValueError(f"the Triton kernel takes at most {MAX_HISTORY} history slots, got {t}")
    check_dtype("features", features)
    check_dtype("descriptors", descriptors)
    if invalid.dtype != torch.bool:
        raise TypeError(f"invalid must be bool, got {invalid.dtype}")

    p = hgt * wid
    f = features.reshape(b, c, p)
    if f.stride(2) != 1:
        f = f.contiguous()
    d = descriptors if descriptors.stride(-1) == 1 else descriptors.contiguous()
    bad = invalid.view(torch.uint8)
    extra = 0 if catch_all is None else 1
    out = torch.empty((b, extra + qd, hgt, wid), dtype=features.dtype, device=features.device)
    if catch_all is not None:
        out[:, :1].copy_(catch_all)
    if b == 0 or p == 0 or qd == 0:
        return out
    if t == 0:
        out[:, extra:].fill_(float("-inf"))
        return out

    cfg = mask_logits_config(t, features.dtype)
    o = out.view(b, extra + qd, p)
    kernel = launchable(_mask_logits_kernel, features.device)
    kernel[(cdiv(qd, cfg["BLOCK_Q"]), cdiv(p, cfg["BLOCK_P"]), b)](
        f, d, bad, o, qd, t, p, extra,
        f.stride(0), f.stride(1), d.stride(0), d.stride(1), d.stride(2),
        bad.stride(0), bad.stride(1), bad.stride(2), o.stride(0), o.stride(1),
        C=c, SCALE=1.0 / c**0.5, PRECISION=dot_precision(features.dtype), **cfg,
    )  # fmt: skip
    return out
