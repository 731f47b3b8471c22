"""Masked average pooling (the encoder's descriptor initialisation), torch and Triton.

Each mask row's descriptor starts as the unweighted mean of the feature vectors at
the pixels where the mask is above 0.5, with the official fallbacks when there are
none: an object takes the feature at its mask's arg-max pixel (the first pixel of
an all-zero mask, as ``argmax`` picks the first of equal values), a background cell
takes zeros.

``features [B,C,*S]`` and ``masks [B,M,*S]`` share their spatial axes ``S`` (any
number, flattened to ``N`` pixels); rows ``m < num_background`` of ``masks`` are
background cells and the rest objects, the order in which the encoder stacks its
descriptors. Output ``[B,M,C]`` in the features' dtype; sums are taken in fp32.

The Triton kernel runs over (pixel range, channel block, batch item): each program
turns its mask tile into 0/1 weights and accumulates weights·featuresᵀ with
``tl.dot`` for all rows at once, along with the counts and a running arg-max. A
second small kernel adds up the ranges and applies the fallbacks.
"""

from __future__ import annotations

import torch

from hodor.kernels._triton import (
    cdiv,
    check_dtype,
    dot_precision,
    launchable,
    next_pow2,
    sm_count,
    tl,
    triton,
)

THRESHOLD = 0.5
"""A pixel belongs to a mask where the mask is strictly above this."""


def masked_avg_pool_reference(
    features: torch.Tensor, masks: torch.Tensor, num_background: int
) -> torch.Tensor:
    """Plain-torch masked average pooling: the model's ``"torch"`` kernels and what ``hodor-export``
    traces.

    Args:
        features: ``[B, C, *S]``.
        masks: ``[B, M, *S]`` in [0, 1].
        num_background: rows ``[0, num_background)`` are background cells, the rest objects.

    Returns:
        ``[B, M, C]`` in the features' dtype (sums taken in at least fp32).
    """
    acc_dtype = torch.promote_types(features.dtype, torch.float32)
    feats = features.flatten(2).transpose(1, 2).to(acc_dtype)  # [B, N, C]
    flat = masks.flatten(2)  # [B, M, N]
    selected = (flat > THRESHOLD).to(acc_dtype)
    count = selected.sum(-1, keepdim=True)  # [B, M, 1]
    # The fallback as a one-hot row (no gather), so that one product serves every row.
    pixel = torch.arange(flat.shape[-1], device=flat.device)
    at_argmax = (pixel == flat.argmax(-1, keepdim=True)).to(acc_dtype)  # the first of equal maxima
    is_background = (torch.arange(flat.shape[1], device=flat.device) < num_background)[:, None]  # [M, 1]
    # An empty background cell keeps its all-zero row: zero sum, and so zero mean.
    selected = torch.where((count > 0) | is_background, selected, at_argmax)
    return (torch.matmul(selected, feats) / count.clamp(min=1)).to(features.dtype)


@triton.jit
def _masked_avg_pool_partial_kernel(
    f_ptr,
    mask_ptr,
    part_sum_ptr,
    part_stat_ptr,
    part_arg_ptr,
    M,
    N,
    C,
    tiles_per_split,
    num_splits,
    stride_fb,
    stride_fc,
    stride_fn,
    stride_mb,
    stride_mm,
    stride_mn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Pixel range ``pid0`` × channel block ``pid1`` of batch item ``pid2``, all mask rows.

    Writes ``part_sum [B,S,BLOCK_M,C]`` (fp32 sums of selected features); the channel-0
    programs also write ``part_stat [B,S,2,BLOCK_M]`` (count, max mask value) and
    ``part_arg [B,S,BLOCK_M]`` (first pixel holding that max).
    """
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_m = tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    c_ok = offs_c < C

    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    count = tl.zeros((BLOCK_M,), tl.float32)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_at = tl.zeros((BLOCK_M,), tl.int32)
    n_first = pid_s * tiles_per_split * BLOCK_N
    for t in range(0, tiles_per_split):
        n = n_first + t * BLOCK_N + offs_n
        n_ok = n < N
        # Pixels past the end read −∞: never selected, never the arg-max.
        mk = tl.load(
            mask_ptr + b * stride_mb + offs_m[:, None] * stride_mm + n[None, :] * stride_mn,
            mask=m_ok[:, None] & n_ok[None, :],
            other=float("-inf"),
        ).to(tl.float32)  # [BM, BN]
        f_t = tl.load(
            f_ptr + b * stride_fb + offs_c[None, :] * stride_fc + n[:, None] * stride_fn,
            mask=n_ok[:, None] & c_ok[None, :],
            other=0.0,
        )  # [BN, BC]
        sel = mk > 0.5
        acc = tl.dot(sel.to(f_t.dtype), f_t, acc, input_precision=PRECISION)
        count += tl.sum(sel.to(tl.float32), axis=1)
        tile_max, tile_at = tl.max(mk, axis=1, return_indices=True, return_indices_tie_break_left=True)
        # Strictly greater: an earlier tile keeps a tie, so the first maximum wins.
        better = tile_max > best
        best = tl.where(better, tile_max, best)
        best_at = tl.where(better, n_first + t * BLOCK_N + tile_at, best_at)

    split = b * num_splits + pid_s
    tl.store(
        part_sum_ptr + (split * BLOCK_M + offs_m[:, None]) * C + offs_c[None, :], acc, mask=c_ok[None, :]
    )
    if pid_c == 0:
        tl.store(part_stat_ptr + split * (2 * BLOCK_M) + offs_m, count)
        tl.store(part_stat_ptr + split * (2 * BLOCK_M) + BLOCK_M + offs_m, best)
        tl.store(part_arg_ptr + split * BLOCK_M + offs_m, best_at)


@triton.jit
def _masked_avg_pool_merge_kernel(
    f_ptr,
    out_ptr,
    part_sum_ptr,
    part_stat_ptr,
    part_arg_ptr,
    M,
    C,
    num_background,
    num_splits,
    stride_fb,
    stride_fc,
    stride_fn,
    stride_ob,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Channel block ``pid0`` of batch item ``pid1``: add the ranges up (in pixel order, so
    the first maximum still wins), divide, and apply the fallbacks."""
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_ok = offs_m < M
    c_ok = offs_c < C

    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    count = tl.zeros((BLOCK_M,), tl.float32)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_at = tl.zeros((BLOCK_M,), tl.int32)
    for s in range(0, num_splits):
        split = b * num_splits + s
        acc += tl.load(
            part_sum_ptr + (split * BLOCK_M + offs_m[:, None]) * C + offs_c[None, :],
            mask=c_ok[None, :],
            other=0.0,
        )
        count += tl.load(part_stat_ptr + split * (2 * BLOCK_M) + offs_m)
        s_best = tl.load(part_stat_ptr + split * (2 * BLOCK_M) + BLOCK_M + offs_m)
        s_at = tl.load(part_arg_ptr + split * BLOCK_M + offs_m)
        better = s_best > best
        best = tl.where(better, s_best, best)
        best_at = tl.where(better, s_at, best_at)

    mean = acc / tl.maximum(count, 1.0)[:, None]
    is_object = offs_m >= num_background
    picked = tl.load(
        f_ptr + b * stride_fb + offs_c[None, :] * stride_fc + best_at[:, None].to(tl.int64) * stride_fn,
        mask=(m_ok & is_object & (count == 0.0))[:, None] & c_ok[None, :],
        other=0.0,
    )
    out = tl.where((count > 0.0)[:, None], mean, picked.to(tl.float32))
    tl.store(
        out_ptr + b * stride_ob + offs_m[:, None] * stride_om + offs_c[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_ok[:, None] & c_ok[None, :],
    )


def masked_avg_pool_config(rows: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and launch options for ``rows`` masks (at most :data:`MAX_ROWS`): all rows
    in one tile, 64 channels per program; 64 pixels per tile (32 with 8 warps for fp32, to
    stay within registers: checked on sm_80 and sm_90 cubins, no spills)."""
    block_m = max(16, next_pow2(rows))
    if dtype == torch.float32:
        return {"BLOCK_M": block_m, "BLOCK_N": 32, "BLOCK_C": 64, "num_warps": 8}
    return {"BLOCK_M": block_m, "BLOCK_N": 64, "BLOCK_C": 64, "num_warps": 4}


MAX_ROWS = 64
"""Mask rows per launch; more are pooled in chunks of this many."""


def masked_avg_pool_triton(
    features: torch.Tensor, masks: torch.Tensor, num_background: int, *, num_splits: int | None = None
) -> torch.Tensor:
    """Fused masked average pooling; same contract as :func:`masked_avg_pool_reference`.
    ``num_splits`` (pixel ranges) overrides the heuristic, for tests and benchmarks."""
    b, c = features.shape[:2]
    m = masks.shape[1]
    if masks.shape[0] != b or masks.shape[2:] != features.shape[2:]:
        raise ValueError(
            f"shape mismatch: features {tuple(features.shape)}, masks {tuple(masks.shape)} "
            "(want [B,C,*S] and [B,M,*S])"
        )
    check_dtype("features", features)
    check_dtype("masks", masks)
    f = features.reshape(b, c, -1)
    mk = masks.reshape(b, m, -1)
    n = f.shape[2]
    out = torch.empty((b, m, c), dtype=features.dtype, device=features.device)
    if b == 0 or m == 0 or c == 0:
        return out
    if n == 0:
        return out.zero_()

    partial = launchable(_masked_avg_pool_partial_kernel, f.device)
    merge = launchable(_masked_avg_pool_merge_kernel, f.device)
    for r0 in range(0, m, MAX_ROWS):
        rows = min(MAX_ROWS, m - r0)
        cfg = masked_avg_pool_config(rows, f.dtype)
        block_m, block_c = cfg["BLOCK_M"], cfg["BLOCK_C"]
        n_tiles = cdiv(n, cfg["BLOCK_N"])
        c_blocks = cdiv(c, block_c)
        splits = num_splits
        if splits is None:
            # Fill the device twice over, with at least four tiles per range.
            wanted = max(1, 2 * sm_count(f.device) // (b * c_blocks))
            splits = max(1, min(wanted, cdiv(n_tiles, 4)))
        splits = max(1, min(splits, n_tiles))
        tiles_per_split = cdiv(n_tiles, splits)
        splits = cdiv(n_tiles, tiles_per_split)  # no empty ranges

        mk_r, out_r = mk[:, r0 : r0 + rows], out[:, r0 : r0 + rows]
        part_sum = torch.empty((b, splits, block_m, c), dtype=torch.float32, device=f.device)
        part_stat = torch.empty((b, splits, 2, block_m), dtype=torch.float32, device=f.device)
        part_arg = torch.empty((b, splits, block_m), dtype=torch.int32, device=f.device)
        partial[(splits, c_blocks, b)](
            f, mk_r, part_sum, part_stat, part_arg, rows, n, c, tiles_per_split, splits,
            f.stride(0), f.stride(1), f.stride(2), mk_r.stride(0), mk_r.stride(1), mk_r.stride(2),
            PRECISION=dot_precision(f.dtype), **cfg,
        )  # fmt: skip
        merge[(c_blocks, b)](
            f, out_r, part_sum, part_stat, part_arg, rows, c, max(0, num_background - r0), splits,
            f.stride(0), f.stride(1), f.stride(2), out_r.stride(0), out_r.stride(1),
            BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4,
        )  # fmt: skip
    return out
