"""Deformable convolution v1 (the decoder's 3×3 refinement) as one Triton kernel.

For output pixel (y, x) and kernel tap (i, j), taken row-major (tap ``k = i·KW + j``),
the input is read at ``(y − (KH−1)/2 + i + dy, x − (KW−1)/2 + j + dx)`` with ``(dy, dx)``
the tap's offset pair (torchvision's layout: channels ``2k, 2k+1`` of ``offsets``),
bilinearly, each corner outside the map counting as zero::

    out[b, o, y, x] = bias[o] + Σ_{c, k} weight[o, c, i, j] · bilinear(x[b, c], py, px)

Stride 1, dilation 1, "same" padding, one offset group, no modulation. Shapes:
``x [B,C,H,W]``, ``offsets [B, 2·KH·KW, H, W]``, ``weight [O,C,KH,KW]`` (odd KH, KW),
``bias [O]`` or None -> ``[B,O,H,W]`` in ``x``'s dtype. The plain-torch implementation
(``grid_sample`` + matmul, exportable) is :func:`hodor.model.deform_conv.deform_conv2d`.

The kernel is an implicit GEMM, ``out[p, o] = Σ_k columns[p, k] · W[k, o]`` over
``k = (tap, channel)``, without the ``[B, C·KH·KW, H·W]`` column matrix in memory: one
program per (output-channel block, pixel tile, batch item) computes each tap's sampling
positions and bilinear weights once (fp32, from offsets in any float dtype), then for
every channel chunk gathers the four corners of each pixel from a channels-last copy of
``x`` (each corner one contiguous run of channels), blends them in fp32, rounds the
column tile to the input dtype and feeds it to ``tl.dot`` with fp32 accumulation: tensor
cores for fp16/bf16; full-precision fp32 products for fp32 inputs (the exact mode; TF32
is never used). The output-channel axis varies fastest in the launch, so the programs
that gather the same pixels run together and share them through L2.

The rounding matches the torch implementation's: positions and sampling in fp32, the
sampled columns rounded to the input dtype before the product, bias added in fp32.

ReLU and GroupNorm, which follow every deformable convolution in the decoder, are not
fused: GroupNorm's statistics cover a whole group over the whole map, so a fused version
still needs a second pass over the output after a grid-wide reduction, which is what
torch's GroupNorm already is; see ``benchmarks/gpu_check.py`` for the measurement that
would decide otherwise.
"""

from __future__ import annotations

import torch

from hodor.kernels._triton import cdiv, check_dtype, dot_precision, launchable, next_pow2, tl, triton


@triton.jit
def _deform_conv_kernel(
    x_ptr,
    off_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    C,
    O,
    H,
    W,
    stride_xb,
    stride_xp,
    stride_fb,
    stride_fk,
    stride_ob,
    stride_oc,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Output channels ``[pid0·BLOCK_O, +BLOCK_O)`` × pixels ``[pid1·BLOCK_P, +BLOCK_P)`` of
    batch item ``pid2``.

    ``x`` is read as ``[B, H·W, C]`` (unit channel stride), ``offsets`` as
    ``[B, 2·KH·KW, H·W]`` (unit pixel stride), the packed weight as ``[KH·KW·C, O]``
    (row ``tap·C + c``, contiguous), ``out`` as ``[B, O, H·W]`` (unit pixel stride).
    """
    pid_o = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    P = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    oy = (offs_p // W).to(tl.float32)
    ox = (offs_p % W).to(tl.float32)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < O
    offs_c = tl.arange(0, BLOCK_C)

    x_rows = x_ptr + b * stride_xb
    off_rows = off_ptr + b * stride_fb + offs_p
    acc = tl.zeros((BLOCK_P, BLOCK_O), tl.float32)
    for tap in tl.static_range(KH * KW):
        dy = tl.load(off_rows + (2 * tap) * stride_fk, mask=p_ok, other=0.0).to(tl.float32)
        dx = tl.load(off_rows + (2 * tap + 1) * stride_fk, mask=p_ok, other=0.0).to(tl.float32)
        py = oy + (tap // KW - (KH - 1) // 2) + dy
        px = ox + (tap % KW - (KW - 1) // 2) + dx
        # Anything beyond one pixel outside reads zeros; clamping there keeps far samples
        # (and ±inf) within int32 without changing what they read.
        py = tl.minimum(tl.maximum(py, -2.0), H + 1.0)
        px = tl.minimum(tl.maximum(px, -2.0), W + 1.0)
        y0f = tl.floor(py)
        x0f = tl.floor(px)
        ly = py - y0f
        lx = px - x0f
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
        in_y0 = (y0 >= 0) & (y0 < H) & p_ok
        in_y1 = (y0 + 1 >= 0) & (y0 + 1 < H) & p_ok
        in_x0 = (x0 >= 0) & (x0 < W)
        in_x1 = (x0 + 1 >= 0) & (x0 + 1 < W)
        m00 = in_y0 & in_x0
        m01 = in_y0 & in_x1
        m10 = in_y1 & in_x0
        m11 = in_y1 & in_x1
        w00 = tl.where(m00, (1.0 - ly) * (1.0 - lx), 0.0)[:, None]
        w01 = tl.where(m01, (1.0 - ly) * lx, 0.0)[:, None]
        w10 = tl.where(m10, ly * (1.0 - lx), 0.0)[:, None]
        w11 = tl.where(m11, ly * lx, 0.0)[:, None]
        at00 = x_rows + (y0 * W + x0)[:, None] * stride_xp
        at01 = at00 + stride_xp
        at10 = at00 + W * stride_xp
        at11 = at10 + stride_xp
        w_rows = w_ptr + (tap * C) * O + offs_o[None, :]
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + offs_c
            c_ok = cc[None, :] < C
            v00 = tl.load(at00 + cc[None, :], mask=m00[:, None] & c_ok, other=0.0).to(tl.float32)
            v01 = tl.load(at01 + cc[None, :], mask=m01[:, None] & c_ok, other=0.0).to(tl.float32)
            v10 = tl.load(at10 + cc[None, :], mask=m10[:, None] & c_ok, other=0.0).to(tl.float32)
            v11 = tl.load(at11 + cc[None, :], mask=m11[:, None] & c_ok, other=0.0).to(tl.float32)
            col = w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11  # [BP, BC]
            wt = tl.load(w_rows + cc[:, None] * O, mask=(cc[:, None] < C) & o_ok[None, :], other=0.0)
            acc = tl.dot(col.to(wt.dtype), wt, acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(
        out_ptr + b * stride_ob + offs_o[None, :] * stride_oc + offs_p[:, None],
        acc.to(out_ptr.dtype.element_ty),
        mask=p_ok[:, None] & o_ok[None, :],
    )


def deform_conv_config(out_channels: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and launch options. Half types: 64 pixels × up to 128 output channels per
    program, channel chunks of 32 (one tensor-core K step of 16 twice); fp32 (plain FMA
    products): 32 pixels × up to 64 channels, chunks of 16, to keep the fp32 tiles in
    registers. Both within registers on sm_80 and sm_90 cubins (no spills)."""
    if dtype == torch.float32:
        block_o = max(16, min(64, next_pow2(out_channels)))
        return {"BLOCK_P": 32, "BLOCK_O": block_o, "BLOCK_C": 16, "num_warps": 4}
    block_o = max(16, min(128, next_pow2(out_channels)))
    return {"BLOCK_P": 64, "BLOCK_O": block_o, "BLOCK_C": 32, "num_warps": 4}


def interpreter_config(out_channels: int) -> dict[str, int]:
    """Tiles for Triton's CPU interpreter, whose cost is per operation, not per element:
    the largest tiles, so that a decoder-sized call is a handful of programs."""
    return {"BLOCK_P": 128, "BLOCK_O": max(16, min(256, next_pow2(out_channels))), "BLOCK_C": 64}


def launch_config(out_channels: int, dtype: torch.dtype, device: torch.device) -> dict[str, int]:
    """:func:`deform_conv_config` for CUDA tensors, :func:`interpreter_config` for the CPU."""
    if device.type == "cuda":
        return deform_conv_config(out_channels, dtype)
    return interpreter_config(out_channels)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[O, C, KH, KW]`` -> ``[KH·KW·C, O]``, row ``tap·C + c``: the kernel's B operand."""
    o, c, kh, kw = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(kh * kw * c, o).contiguous()


def deform_conv2d_triton(
    x: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    packed_weight: torch.Tensor | None = None,
    block_p: int | None = None,
    block_o: int | None = None,
    block_c: int | None = None,
) -> torch.Tensor:
    """Fused deformable convolution; same contract as :func:`hodor.model.deform_conv.deform_conv2d`.

    Args:
        x: ``[B, C, H, W]`` fp32, fp16 or bf16 (any strides).
        offsets: ``[B, 2·KH·KW, H, W]``, any float dtype; per tap ``(dy, dx)``, taps row-major.
        weight: ``[O, C, KH, KW]`` in ``x``'s dtype, KH and KW odd.
        bias: ``[O]`` or None.
        packed_weight: ``pack_weight(weight)``, when the caller keeps it between calls.
        block_p, block_o, block_c: override the tile sizes (tests, benchmarks).

    Returns:
        ``[B, O, H, W]`` in ``x``'s dtype; fp32 accumulation.
    """
    b, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    if c_w != c or kh % 2 != 1 or kw % 2 != 1:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}: "
            f"want [O, {c}, KH, KW] with odd KH and KW"
        )
    if offsets.shape != (b, 2 * kh * kw, h, w):
        raise ValueError(f"offsets {tuple(offsets.shape)}: want {(b, 2 * kh * kw, h, w)}")
    if bias is not None and bias.shape != (o,):
        raise ValueError(f"bias {tuple(bias.shape)}: want ({o},)")
    check_dtype("x", x)
    check_dtype("offsets", offsets)
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")

    out = torch.empty((b, o, h, w), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if c == 0:
        return out.copy_(bias[:, None, None]) if bias is not None else out.zero_()

    # Channels-last: each bilinear corner is one contiguous run of channels.
    x_cl = x.permute(0, 2, 3, 1)
    if not x_cl.is_contiguous():
        x_cl = x_cl.contiguous()
    off = offsets.reshape(b, 2 * kh * kw, h * w)
    if off.stride(2) != 1:
        off = off.contiguous()
    wt = packed_weight if packed_weight is not None else pack_weight(weight)
    if wt.shape != (kh * kw * c, o) or not wt.is_contiguous() or wt.dtype != x.dtype:
        raise ValueError(
            f"packed_weight must be pack_weight(weight): [{kh * kw * c}, {o}], contiguous, {x.dtype}"
        )
    o_flat = out.view(b, o, h * w)

    cfg = launch_config(o, x.dtype, x.device)
    cfg["BLOCK_P"] = block_p or cfg["BLOCK_P"]
    cfg["BLOCK_O"] = block_o or cfg["BLOCK_O"]
    cfg["BLOCK_C"] = block_c or cfg["BLOCK_C"]
    kernel = launchable(_deform_conv_kernel, x.device)
    kernel[(cdiv(o, cfg["BLOCK_O"]), cdiv(h * w, cfg["BLOCK_P"]), b)](
        x_cl, off, wt, bias if bias is not None else wt, o_flat, c, o, h, w,
        x_cl.stride(0), x_cl.stride(2), off.stride(0), off.stride(1), o_flat.stride(0), o_flat.stride(1),
        KH=kh, KW=kw, HAS_BIAS=bias is not None, PRECISION=dot_precision(x.dtype), **cfg,
    )  # fmt: skip
    return out
