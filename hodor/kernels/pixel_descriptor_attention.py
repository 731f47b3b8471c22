"""Pixel→descriptor attention (the decoder's cross-attention), torch and Triton.

Every pixel of the 1/8 map attends to the descriptor history: ``K = (I + Qb)·T`` keys
(objects' entries first, then background's, as the decoder concatenates them),
entries marked invalid excluded, softmax over keys, no output projection::

    out[b, n, h] = softmax_k( q[b,n,h]·k[b,k,h] / √D, invalid keys → −∞ ) · v[b,:,h]

Layout: heads packed in the channel axis (``C = H·D``, channel ``h·D + d``):
``q [B,N,C]`` (the pixel queries, already projected), ``k, v [B,K,C]``,
``key_invalid [B,K]`` bool, ``out [B,N,C]``.

A batch item whose keys are *all* invalid gets zeros: attention over nothing adds nothing, and
the residual around it carries the pixels on. Every implementation agrees on this: the torch
reference below (which the model runs with ``kernels="torch"`` and ``hodor-export`` traces, so
the ONNX graphs and TensorRT engines too), the Triton kernel and the native library. The
official code computes a softmax over nothing but −∞, which is NaN and makes every logit of
the frame NaN; it never reaches that case (a decode always has a valid background entry), and
neither does a single session. A batched call can: a video slot with nothing in it is padding,
all invalid, and must not turn into NaN.

The Triton kernel has one program per (pixel tile, head, batch item) and makes one
pass over the pixels: the queries are read once, the output written once, and the
keys and values (a few hundred rows, shared by every program) stream through on-chip
memory in tiles with an online softmax.
"""

from __future__ import annotations

import math

import torch

from hodor.kernels._triton import LOG2E, cdiv, check_dtype, dot_precision, launchable, next_pow2, tl, triton


def pixel_descriptor_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_invalid: torch.Tensor, num_heads: int = 8
) -> torch.Tensor:
    """Plain-torch pixel→descriptor attention, in the inputs' dtype: the model's ``"torch"``
    kernels and what ``hodor-export`` traces.

    Args:
        q: ``[B, N, C]`` projected pixel queries, heads packed as ``C = H·D``.
        k, v: ``[B, K, C]`` projected descriptor keys and values.
        key_invalid: ``[B, K]`` bool, True for history entries to leave out.
        num_heads: ``H``.

    Returns:
        ``[B, N, C]``; zeros for a batch item whose keys are all invalid (see the module).
    """
    b, n, c = q.shape
    nk = k.shape[1]
    d = c // num_heads
    qh = q.reshape(b, n, num_heads, d).transpose(1, 2)  # [B,H,N,D]
    kh = k.reshape(b, nk, num_heads, d).transpose(1, 2)  # [B,H,K,D]
    vh = v.reshape(b, nk, num_heads, d).transpose(1, 2)
    logits = torch.matmul(qh / math.sqrt(d), kh.transpose(-1, -2))  # [B,H,N,K]
    # Invalid keys to −∞ by adding a [B,1,1,K] bias of 0 / −∞: the same values as selecting −∞
    # over the [B,H,N,K] logits (x + 0 = x), without materialising a tensor of −∞ that size
    # (in the exported graphs a broadcast Add, where a Where over an expanded constant cost more).
    bias = torch.zeros_like(key_invalid, dtype=logits.dtype).masked_fill(key_invalid, float("-inf"))
    logits = logits + bias[:, None, None, :]
    out = torch.matmul(logits.softmax(-1), vh).transpose(1, 2).reshape(b, n, c)
    # Softmax over nothing but −∞ is NaN; an empty history contributes nothing instead. Chosen on
    # the [B,N,C] output rather than the [B,H,N,K] weights: the same result, a smaller select.
    nothing = key_invalid.all(-1)[:, None, None]  # [B,1,1]
    return torch.where(nothing, torch.zeros_like(out), out)


@triton.jit
def _pixel_descriptor_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    invalid_ptr,
    out_ptr,
    N,
    K,
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kk,
    stride_vb,
    stride_vk,
    stride_ib,
    stride_ik,
    stride_ob,
    stride_on,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QK_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Pixels ``[pid0·BLOCK_N, +BLOCK_N)`` of head ``pid1``, batch item ``pid2``.
    ``invalid`` is read as bytes (0 = valid)."""
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N

    q = tl.load(
        q_ptr + b * stride_qb + offs_n[:, None] * stride_qn + h * D + offs_d[None, :],
        mask=n_ok[:, None],
        other=0.0,
    )  # [BN, D]

    m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N, D), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < K
        bad = tl.load(invalid_ptr + b * stride_ib + kk * stride_ik, mask=k_ok, other=1)
        use = k_ok & (bad == 0)
        k_t = tl.load(
            k_ptr + b * stride_kb + kk[None, :] * stride_kk + h * D + offs_d[:, None],
            mask=k_ok[None, :],
            other=0.0,
        )  # [D, BK]
        v_t = tl.load(
            v_ptr + b * stride_vb + kk[:, None] * stride_vk + h * D + offs_d[None, :],
            mask=k_ok[:, None],
            other=0.0,
        )  # [BK, D]
        # log2-domain scores (QK_SCALE = log2(e)/√D), so the softmax can use exp2.
        s = tl.dot(q, k_t, input_precision=PRECISION) * QK_SCALE
        s = tl.where(use[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A tile of only invalid keys leaves m at −∞; subtracting 0 then keeps exp2 at 0, not NaN.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_sub)
        p = tl.exp2(s - m_sub[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_t.dtype), v_t, input_precision=PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out_ptr + b * stride_ob + offs_n[:, None] * stride_on + h * D + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=n_ok[:, None],
    )


def pixel_descriptor_attention_config(num_keys: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and launch options: 64 pixels per program; key tiles of up to 64 (so
    one tile holds a history of up to 64 entries), 32 for fp32 to stay within registers
    (checked on sm_80 and sm_90 cubins: no spills)."""
    cap = 32 if dtype == torch.float32 else 64
    return {"BLOCK_N": 64, "BLOCK_K": max(16, min(cap, next_pow2(num_keys))), "num_warps": 4}


def pixel_descriptor_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_invalid: torch.Tensor,
    num_heads: int = 8,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """Fused pixel→descriptor attention; same contract as
    :func:`pixel_descriptor_attention_reference`. fp32 accumulation for fp32, fp16 and
    bf16 inputs; returns ``q``'s dtype. ``block_n``/``block_k`` override the tile sizes."""
    b, n, c = q.shape
    nk = k.shape[1]
    if c % num_heads:
        raise ValueError(f"channels {c} are not divisible by {num_heads} heads")
    d = c // num_heads
    if k.shape != (b, nk, c) or v.shape != (b, nk, c) or key_invalid.shape != (b, nk):
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"key_invalid {tuple(key_invalid.shape)} (want q [B,N,C], k/v [B,K,C], key_invalid [B,K])"
        )
    if d < 16 or d != next_pow2(d):
        raise ValueError(f"the Triton kernel needs a power-of-two head dim >= 16, got {d}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_dtype(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_invalid.dtype != torch.bool:
        raise TypeError(f"key_invalid must be bool, got {key_invalid.dtype}")

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    invalid = key_invalid.view(torch.uint8)  # same bytes; Triton's int1 pointers are awkward to share with C
    out = torch.empty((b, n, c), dtype=q.dtype, device=q.device)
    if b == 0 or n == 0:
        return out
    if nk == 0:
        return out.zero_()

    cfg = pixel_descriptor_attention_config(nk, q.dtype)
    cfg["BLOCK_N"] = block_n or cfg["BLOCK_N"]
    cfg["BLOCK_K"] = block_k or cfg["BLOCK_K"]
    kernel = launchable(_pixel_descriptor_attention_kernel, q.device)
    kernel[(cdiv(n, cfg["BLOCK_N"]), num_heads, b)](
        q, k, v, invalid, out, n, nk,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        invalid.stride(0), invalid.stride(1), out.stride(0), out.stride(1),
        D=d, QK_SCALE=LOG2E / math.sqrt(d), PRECISION=dot_precision(q.dtype), **cfg,
    )  # fmt: skip
    return out
