"""Soft-masked descriptor attention (the encoder's cross-attention), torch and Triton.

A few descriptors (``Q = Qb + I``: background cells and objects) attend to every
pixel of the 1/8 feature map, each head's logits lowered where the descriptor's soft
mask is low::

    out[b, q, h] = softmax_n( q[b,q,h]·k[b,n,h] / √D − (1 − mask[b,q,n])·scale[h] ) · v[b,:,h]

Layout (shared by both implementations, and the one the model produces without any
transposes): heads are packed in the channel axis, ``C = H·D`` with channel
``h·D + d``, so ``q [B,Q,C]``, ``k, v [B,N,C]`` and ``out [B,Q,C]`` are the
projections' outputs as they are; ``mask [B,Q,N]`` in [0, 1], ``scale [H]``. The
output projection is not part of this function.

The Triton kernel has one program per (pixel range, batch): it reads a tile of keys
and values for all heads and the matching mask tile once, scores all heads with one
batched ``tl.dot``, and keeps an online softmax per (head, descriptor). With so few
descriptors the pixel axis is the only source of parallelism, so it is cut into
ranges whose partial results (unnormalised output, running max and sum) are merged
by a second small kernel, as in flash-decoding. With one range the first kernel
normalises and writes the output itself.
"""

from __future__ import annotations

import math

import torch

from hodor.kernels._triton import (
    LOG2E,
    cdiv,
    check_dtype,
    dot_precision,
    launchable,
    next_pow2,
    sm_count,
    tl,
    triton,
)


def soft_masked_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    num_heads: int = 8,
) -> torch.Tensor:
    """Plain-torch soft-masked attention, in the inputs' dtype: the model's ``"torch"`` kernels and
    what ``hodor-export`` traces.

    Args:
        q: ``[B, Q, C]`` projected descriptors, heads packed as ``C = H·D``.
        k, v: ``[B, N, C]`` projected pixel keys (position encoding already added) and values.
        mask: ``[B, Q, N]`` soft masks in [0, 1], any float dtype.
        scale: ``[H]`` per-head mask scales.
        num_heads: ``H``.

    Returns:
        ``[B, Q, C]``, before the output projection.
    """
    b, nq, c = q.shape
    n = k.shape[1]
    d = c // num_heads
    qh = q.reshape(b, nq, num_heads, d).transpose(1, 2)  # [B,H,Q,D]
    kh = k.reshape(b, n, num_heads, d).transpose(1, 2)  # [B,H,N,D]
    vh = v.reshape(b, n, num_heads, d).transpose(1, 2)
    logits = torch.matmul(qh / math.sqrt(d), kh.transpose(-1, -2))  # [B,H,Q,N]
    penalty = (1.0 - mask.to(q.dtype))[:, None] * scale.to(q.dtype)[None, :, None, None]
    attn = (logits - penalty).softmax(-1)
    return torch.matmul(attn, vh).transpose(1, 2).reshape(b, nq, c)


@triton.jit
def _soft_masked_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    scale_ptr,
    out_ptr,
    part_acc_ptr,
    part_stat_ptr,
    Q,
    N,
    tiles_per_split,
    num_splits,
    stride_qb,
    stride_qq,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_mb,
    stride_mq,
    stride_mn,
    stride_ob,
    stride_oq,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QK_SCALE: tl.constexpr,
    FINAL: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One pixel range of one batch item, all heads and descriptors.

    ``FINAL``: normalise and write ``out`` directly (a single range); otherwise write the
    unnormalised accumulator to ``part_acc [B,S,H,BLOCK_Q,D]`` and the running max and
    sum (log2 domain) to ``part_stat [B,S,2,H,BLOCK_Q]``.
    """
    pid_s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)

    offs_h = tl.arange(0, H)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    q_ok = offs_q < Q

    # [H, BLOCK_Q, D]: head h of descriptor q lives at channels h*D .. h*D+D-1.
    q_ptrs = (
        q_ptr
        + b * stride_qb
        + offs_q[None, :, None] * stride_qq
        + (offs_h[:, None, None] * D + offs_d[None, None, :])
    )
    q = tl.load(q_ptrs, mask=q_ok[None, :, None], other=0.0)
    # Scores are kept in the log2 domain (QK_SCALE = log2(e)/√D) so the softmax can use exp2.
    mask_scale = tl.load(scale_ptr + offs_h).to(tl.float32) * 1.4426950408889634  # [H]

    m_i = tl.full((H, BLOCK_Q), float("-inf"), tl.float32)
    l_i = tl.zeros((H, BLOCK_Q), tl.float32)
    acc = tl.zeros((H, BLOCK_Q, D), tl.float32)

    k_base = k_ptr + b * stride_kb + offs_h[:, None, None] * D + offs_d[None, :, None]  # [H, D, 1]
    v_base = v_ptr + b * stride_vb + offs_h[:, None, None] * D + offs_d[None, None, :]  # [H, 1, D]
    m_base = mask_ptr + b * stride_mb + offs_q[:, None] * stride_mq  # [BLOCK_Q, 1]
    n_first = pid_s * tiles_per_split * BLOCK_N
    for t in range(0, tiles_per_split):
        n = n_first + t * BLOCK_N + offs_n
        n_ok = n < N
        k_t = tl.load(k_base + n[None, None, :] * stride_kn, mask=n_ok[None, None, :], other=0.0)  # [H,D,BN]
        v_t = tl.load(v_base + n[None, :, None] * stride_vn, mask=n_ok[None, :, None], other=0.0)  # [H,BN,D]
        # The mask tile is read once and shared by all heads.
        soft = tl.load(m_base + n[None, :] * stride_mn, mask=q_ok[:, None] & n_ok[None, :], other=1.0)
        penalty = (1.0 - soft.to(tl.float32))[None, :, :] * mask_scale[:, None, None]  # [H,BQ,BN]
        s = tl.dot(q, k_t, input_precision=PRECISION) * QK_SCALE - penalty
        s = tl.where(n_ok[None, None, :], s, float("-inf"))
        # Every range holds at least one real pixel, so m_new is finite from the first tile on.
        m_new = tl.maximum(m_i, tl.max(s, axis=2))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, :, None])
        l_i = l_i * alpha + tl.sum(p, axis=2)
        acc = acc * alpha[:, :, None] + tl.dot(p.to(v_t.dtype), v_t, input_precision=PRECISION)
        m_i = m_new

    if FINAL:
        out = acc / l_i[:, :, None]
        o_ptrs = (
            out_ptr
            + b * stride_ob
            + offs_q[None, :, None] * stride_oq
            + (offs_h[:, None, None] * D + offs_d[None, None, :])
        )
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_ok[None, :, None])
    else:
        split = b * num_splits + pid_s
        hq = offs_h[:, None] * BLOCK_Q + offs_q[None, :]  # [H, BQ]
        tl.store(part_acc_ptr + split * (H * BLOCK_Q * D) + hq[:, :, None] * D + offs_d[None, None, :], acc)
        tl.store(part_stat_ptr + split * (2 * H * BLOCK_Q) + hq, m_i)
        tl.store(part_stat_ptr + split * (2 * H * BLOCK_Q) + H * BLOCK_Q + hq, l_i)


@triton.jit
def _soft_masked_attention_merge_kernel(
    out_ptr,
    part_acc_ptr,
    part_stat_ptr,
    Q,
    num_splits,
    stride_ob,
    stride_oq,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Combine the pixel ranges of one (head, batch item) in order, keeping a running
    maximum: each range's accumulator and sum are rescaled by ``exp2(m_s − m)`` as the
    maximum ``m`` grows, then the total is normalised. Every range holds real pixels,
    so all ``m_s`` are finite."""
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, D)

    m_run = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_run = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, D), tl.float32)
    for s in range(0, num_splits):
        split = b * num_splits + s
        m_s = tl.load(part_stat_ptr + split * (2 * H * BLOCK_Q) + h * BLOCK_Q + offs_q)
        l_s = tl.load(part_stat_ptr + split * (2 * H * BLOCK_Q) + H * BLOCK_Q + h * BLOCK_Q + offs_q)
        a_s = tl.load(
            part_acc_ptr + split * (H * BLOCK_Q * D) + (h * BLOCK_Q + offs_q[:, None]) * D + offs_d[None, :]
        )
        m_new = tl.maximum(m_run, m_s)
        w_run = tl.exp2(m_run - m_new)
        w_s = tl.exp2(m_s - m_new)
        l_run = l_run * w_run + l_s * w_s
        acc = acc * w_run[:, None] + a_s * w_s[:, None]
        m_run = m_new

    out = acc / l_run[:, None]
    o_ptrs = out_ptr + b * stride_ob + offs_q[:, None] * stride_oq + h * D + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=(offs_q < Q)[:, None])


def soft_masked_attention_config(num_queries: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and launch options for ``num_queries`` descriptors (at most
    :data:`MAX_QUERIES`): ``BLOCK_Q`` covers them all; ``BLOCK_N`` shrinks as it grows, and
    for fp32 (no tensor cores, twice the bytes per tile), so the ``[H, BLOCK_Q, BLOCK_N]``
    scores and ``[H, BLOCK_Q, D]`` accumulator stay in registers and the pipelined tiles
    within an A100's shared memory. Checked on sm_80 and sm_90 cubins at H = 8, D = 32:
    no spills."""
    block_q = max(16, next_pow2(num_queries))
    if dtype == torch.float32:
        return {"BLOCK_Q": block_q, "BLOCK_N": 16, "num_warps": 8, "num_stages": 2 if block_q <= 16 else 1}
    return {"BLOCK_Q": block_q, "BLOCK_N": 32 if block_q <= 32 else 16, "num_warps": 8, "num_stages": 3}


MAX_QUERIES = 64
"""Descriptors per launch; more are processed in chunks of this many (they are independent)."""


def soft_masked_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    num_heads: int = 8,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Fused soft-masked attention; same contract as :func:`soft_masked_attention_reference`.

    Accumulates in fp32 whatever the input dtype (fp32, fp16, bf16); returns ``q``'s dtype.
    ``num_splits`` (pixel ranges) and ``block_n`` (pixels per tile) override the
    heuristics, for tests and benchmarks.
    """
    b, nq, c = q.shape
    n = k.shape[1]
    if c % num_heads:
        raise ValueError(f"channels {c} are not divisible by {num_heads} heads")
    d = c // num_heads
    if (
        k.shape != (b, n, c)
        or v.shape != (b, n, c)
        or mask.shape != (b, nq, n)
        or scale.shape != (num_heads,)
    ):
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"mask {tuple(mask.shape)}, scale {tuple(scale.shape)} (want q [B,Q,C], k/v [B,N,C], "
            f"mask [B,Q,N], scale [H])"
        )
    if d < 16 or d != next_pow2(d) or num_heads != next_pow2(num_heads):
        raise ValueError(
            f"the Triton kernel needs power-of-two heads and head dims >= 16 (H={num_heads}, D={d})"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_dtype(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")

    # Channels must be contiguous for coalesced tile loads; everything else may be strided.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = scale.contiguous()
    out = torch.empty((b, nq, c), dtype=q.dtype, device=q.device)
    if n == 0 or nq == 0 or b == 0:
        return out.zero_()
    for r0 in range(0, nq, MAX_QUERIES):
        rows = slice(r0, min(nq, r0 + MAX_QUERIES))
        _launch(q[:, rows], k, v, mask[:, rows], scale, out[:, rows], num_heads, num_splits, block_n)
    return out


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    out: torch.Tensor,
    num_heads: int,
    num_splits: int | None,
    block_n: int | None,
) -> None:
    """One chunk of at most :data:`MAX_QUERIES` descriptors, written into ``out``'s rows."""
    b, nq, c = q.shape
    n = k.shape[1]
    d = c // num_heads
    cfg = soft_masked_attention_config(nq, q.dtype)
    if block_n:
        cfg["BLOCK_N"] = block_n
    bq, bn = cfg["BLOCK_Q"], cfg["BLOCK_N"]
    n_tiles = cdiv(n, bn)
    if num_splits is None:
        # Enough programs to fill the device twice over, but at least four tiles per range
        # so the partial results stay small next to the keys and values they summarise.
        wanted = max(1, 2 * sm_count(q.device) // b)
        num_splits = max(1, min(wanted, cdiv(n_tiles, 4)))
    num_splits = max(1, min(num_splits, n_tiles))
    tiles_per_split = cdiv(n_tiles, num_splits)
    num_splits = cdiv(n_tiles, tiles_per_split)  # no empty ranges
    final = num_splits == 1

    if final:
        part_acc = part_stat = out  # not touched by the kernel
    else:
        part_acc = torch.empty((b, num_splits, num_heads, bq, d), dtype=torch.float32, device=q.device)
        part_stat = torch.empty((b, num_splits, 2, num_heads, bq), dtype=torch.float32, device=q.device)

    kernel = launchable(_soft_masked_attention_kernel, q.device)
    kernel[(num_splits, b)](
        q, k, v, mask, scale, out, part_acc, part_stat,
        nq, n, tiles_per_split, num_splits,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        mask.stride(0), mask.stride(1), mask.stride(2), out.stride(0), out.stride(1),
        H=num_heads, D=d, QK_SCALE=LOG2E / math.sqrt(d), FINAL=final, PRECISION=dot_precision(q.dtype), **cfg,
    )  # fmt: skip
    if not final:
        merge = launchable(_soft_masked_attention_merge_kernel, q.device)
        merge[(num_heads, b)](
            out, part_acc, part_stat, nq, num_splits, out.stride(0), out.stride(1),
            H=num_heads, D=d, BLOCK_Q=bq, num_warps=4,
        )  # fmt: skip
