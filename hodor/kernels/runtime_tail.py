"""The runtime's work after each decode, as two Triton kernels (fp32).

After the decoder has produced the logits of a frame at 1/4 of the padded size,
``logits [1, Q, h, w]`` with ``Q = K + Qb + I`` channels (``K`` catch-all maps, ``Qb``
background maps, one map per object in ascending id order), the runtime computes two
things from them. All resampling is bilinear, ``align_corners=False``, no antialiasing,
by size (PyTorch's ``F.interpolate(x, size=..., mode="bilinear")``).

**Output path** (:func:`output_id_mask`): the frame's id mask ``[H, W]`` uint8::

    logits -> ×4 to the padded size (Hp, Wp) -> softmax over channels -> reference
    override -> crop to the resized size (rh, rw) -> to the frame size (H, W) ->
    hidden channels set to −1 -> arg-max over channels (ties to the lower channel)
    -> id table (catch-all and background -> 0) -> the user's mask where it is > 0

**Internal path** (:func:`encoder_masks`): the soft masks the next encode reads::

    softmax over channels at 1/4 -> ×4 to (Hp, Wp) -> reference override -> to the
    encoder's size (Hp/8, Wp/8) -> object maps fg [1, I, h8, w8] and background maps
    bg [1, Qb, h8, w8] = grid · (1 − Σ fg)

**Reference override** (:class:`ReferenceOverride`): at the pixels of a reference
mask every channel is zeroed and the referenced object's channel is set to its mask
(1 inside, 0 outside), references applied in order. Over a list of references with
distinct channels this is, per pixel, a function of the *last* reference covering it:
a referenced channel is 1 exactly where it is that last reference, every other channel
keeps its value only where no reference covers the pixel. The kernels read that as a
label map (the last covering reference's channel, −1 for none) and a per-channel flag.

Each kernel is one pass over its output pixels: every output pixel gathers the few
logits it depends on through both resamplings (the ×4 map is never written), so the
only memory traffic is the logits (which stay in L2), the label map on reference frames
and the outputs. Channels are one tile axis (``Q`` padded to a power of two), so the
softmax, the arg-max and the object sum are reductions inside a program.

Floating point: the same formulas as PyTorch's bilinear kernels (source index
``scale·(dst + 0.5) − 0.5`` clamped at 0, ``scale = in/out`` in fp32, the row-wise blend
``h0·(w0·a + w1·b) + h1·(w0·c + w1·d)``), softmax as ``exp(z − max) / Σ``, with correctly
rounded division. Results agree with the torch path to a few fp32 ulps; an id can differ
only where two channels' probabilities agree to that precision.

These functions are leaves: they take plain tensors and sizes and know nothing of the
loop that calls them. After a decode, with the loop's names (``nb = K + Qb`` channels
before the objects, ``ids`` the objects' ids in slot order, ``overrides`` the
(slot, padded bool mask) pairs of the references kept at this frame, ``annotated`` the
channels of the tracked objects the user annotated here)::

    override = reference_override(logits.shape[1], nb, overrides)   # None without references
    hidden = channel_flags(logits.shape[1], annotated, device) if annotated else None
    id_mask = output_id_mask(logits, geometry.padded, geometry.resized, geometry.size,
                             id_table(nb, ids, device), override, hidden, user_mask_or_None)
    fg, bg = encoder_masks(logits, geometry.padded, nb, grid_at_stride_8, override)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hodor.kernels._triton import cdiv, launchable, next_pow2, tl, triton


@dataclass(frozen=True)
class ReferenceOverride:
    """One frame's reference masks in the form the kernels read.

    ``labels [Hp, Wp]`` int32: the channel of the last reference whose mask covers each
    padded pixel, −1 where none does. ``is_reference [Q]`` uint8: 1 for the channels of
    the referenced objects.
    """

    labels: torch.Tensor
    is_reference: torch.Tensor


def reference_override(
    num_channels: int,
    num_bg_channels: int,
    references: Sequence[tuple[int, torch.Tensor]],
) -> ReferenceOverride | None:
    """The kernels' form of ``references`` (object slot, bool mask ``[Hp, Wp]``, applied in
    order, as ``hodor.engine.loop.masks.override_with_references`` takes them): channel
    ``num_bg_channels + slot``. None when there is no reference. Slots must be distinct."""
    if not references:
        return None
    slots = [int(slot) for slot, _ in references]
    if len(set(slots)) != len(slots):
        raise ValueError(f"each object can be referenced once per frame, got slots {slots}")
    first = references[0][1]
    labels = torch.full(first.shape, -1, dtype=torch.int32, device=first.device)
    is_reference = torch.zeros(num_channels, dtype=torch.uint8, device=first.device)
    for slot, mask in references:
        channel = num_bg_channels + int(slot)
        if not 0 <= channel < num_channels:
            raise ValueError(f"object slot {slot} is outside the {num_channels - num_bg_channels} objects")
        labels = torch.where(mask, torch.tensor(channel, dtype=torch.int32, device=first.device), labels)
        is_reference[channel] = 1
    return ReferenceOverride(labels.contiguous(), is_reference)


def id_table(num_bg_channels: int, object_ids: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """``[Q]`` uint8: 0 for the catch-all and background channels, then the object ids."""
    table = [0] * num_bg_channels + [int(i) for i in object_ids]
    return torch.tensor(table, dtype=torch.uint8, device=device)


def channel_flags(num_channels: int, channels: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """``[Q]`` uint8 with 1 at ``channels`` (e.g. the hidden channels of :func:`output_id_mask`)."""
    flags = torch.zeros(num_channels, dtype=torch.uint8)
    flags[list(channels)] = 1
    return flags.to(device)


def resample_scale(in_size: int, out_size: int) -> float:
    """PyTorch's bilinear scale for a resize by size, ``in/out`` rounded to fp32."""
    return float(torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32))


# ---------------------------------------------------------------------------------- kernels


@triton.jit
def _source_index(dst, scale, in_size):
    """Bilinear source rows (or columns) of output index ``dst``, as PyTorch computes them for
    ``align_corners=False``: ``(i0, i1, l0, l1)``, value = ``l0·x[i0] + l1·x[i1]``."""
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    i0 = src.to(tl.int32)  # src >= 0: truncation is floor
    i1 = tl.where(i0 < in_size - 1, i0 + 1, i0)
    l1 = src - i0.to(tl.float32)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _softmax(z, c_ok):
    """Softmax over axis 1 of ``z [BLOCK, Q_PAD]``; padding channels (``~c_ok``) get 0."""
    z = tl.where(c_ok[None, :], z, float("-inf"))
    m = tl.max(z, axis=1)
    e = tl.exp(z - m[:, None])
    return tl.math.div_rn(e, tl.sum(e, axis=1)[:, None])


@triton.jit
def _override(p, labels_ptr, py, px, Wp, ok, is_ref, c):
    """Apply the reference override at padded pixels ``(py, px)`` to ``p [BLOCK, Q_PAD]``."""
    lab = tl.load(labels_ptr + py * Wp + px, mask=ok, other=-1)[:, None]
    return tl.where(is_ref[None, :], (lab == c[None, :]).to(tl.float32), tl.where(lab >= 0, 0.0, p))


@triton.jit
def _logit_rows(logits_ptr, stride_c, w, y, x, ok, c, c_ok):
    """``logits[:, y, x]`` as ``[BLOCK, Q_PAD]`` (0 in the padding channels)."""
    return tl.load(
        logits_ptr + c[None, :] * stride_c + (y * w + x)[:, None], mask=ok[:, None] & c_ok[None, :], other=0.0
    )


@triton.jit
def _upsampled_then_softmax(logits_ptr, stride_c, h, w, up_y, up_x, py, px, ok, c, c_ok):
    """Output path at padded pixels ``(py, px)``: bilinear of the logits, then softmax."""
    y0, y1, ly0, ly1 = _source_index(py, up_y, h)
    x0, x1, lx0, lx1 = _source_index(px, up_x, w)
    ly0 = ly0[:, None]
    ly1 = ly1[:, None]
    lx0 = lx0[:, None]
    lx1 = lx1[:, None]
    z = ly0 * (
        lx0 * _logit_rows(logits_ptr, stride_c, w, y0, x0, ok, c, c_ok)
        + lx1 * _logit_rows(logits_ptr, stride_c, w, y0, x1, ok, c, c_ok)
    ) + ly1 * (
        lx0 * _logit_rows(logits_ptr, stride_c, w, y1, x0, ok, c, c_ok)
        + lx1 * _logit_rows(logits_ptr, stride_c, w, y1, x1, ok, c, c_ok)
    )
    return _softmax(z, c_ok)


@triton.jit
def _softmax_then_upsampled(logits_ptr, stride_c, h, w, up_y, up_x, py, px, ok, c, c_ok):
    """Internal path at padded pixels ``(py, px)``: softmax at 1/4, then bilinear."""
    y0, y1, ly0, ly1 = _source_index(py, up_y, h)
    x0, x1, lx0, lx1 = _source_index(px, up_x, w)
    ly0 = ly0[:, None]
    ly1 = ly1[:, None]
    lx0 = lx0[:, None]
    lx1 = lx1[:, None]
    return ly0 * (
        lx0 * _softmax(_logit_rows(logits_ptr, stride_c, w, y0, x0, ok, c, c_ok), c_ok)
        + lx1 * _softmax(_logit_rows(logits_ptr, stride_c, w, y0, x1, ok, c, c_ok), c_ok)
    ) + ly1 * (
        lx0 * _softmax(_logit_rows(logits_ptr, stride_c, w, y1, x0, ok, c, c_ok), c_ok)
        + lx1 * _softmax(_logit_rows(logits_ptr, stride_c, w, y1, x1, ok, c, c_ok), c_ok)
    )


@triton.jit
def _output_id_mask_kernel(
    logits_ptr,
    labels_ptr,
    is_ref_ptr,
    hidden_ptr,
    ids_ptr,
    user_ptr,
    out_ptr,
    Q,
    h,
    w,
    Wp,
    rh,
    rw,
    H,
    W,
    up_y,
    up_x,
    down_y,
    down_x,
    HAS_OVERRIDE: tl.constexpr,
    HAS_HIDDEN: tl.constexpr,
    HAS_USER: tl.constexpr,
    Q_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Frame pixels ``[pid·BLOCK, +BLOCK)`` (row-major over ``H × W``), all channels.

    ``logits [Q, h, w]`` contiguous; ``labels [Hp, Wp]`` int32; ``is_ref``, ``hidden`` and
    ``ids`` ``[Q]`` uint8; ``user`` and ``out`` ``[H, W]`` uint8. ``up_*`` = h/Hp, w/Wp and
    ``down_*`` = rh/H, rw/W, each as PyTorch rounds it (fp32).
    """
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < H * W
    oy = offs // W
    ox = offs % W
    c = tl.arange(0, Q_PAD)
    c_ok = c < Q
    stride_c = h * w

    y0, y1, ly0, ly1 = _source_index(oy, down_y, rh)
    x0, x1, lx0, lx1 = _source_index(ox, down_x, rw)
    p00 = _upsampled_then_softmax(logits_ptr, stride_c, h, w, up_y, up_x, y0, x0, ok, c, c_ok)
    p01 = _upsampled_then_softmax(logits_ptr, stride_c, h, w, up_y, up_x, y0, x1, ok, c, c_ok)
    p10 = _upsampled_then_softmax(logits_ptr, stride_c, h, w, up_y, up_x, y1, x0, ok, c, c_ok)
    p11 = _upsampled_then_softmax(logits_ptr, stride_c, h, w, up_y, up_x, y1, x1, ok, c, c_ok)
    if HAS_OVERRIDE:
        is_ref = tl.load(is_ref_ptr + c, mask=c_ok, other=0) != 0
        p00 = _override(p00, labels_ptr, y0, x0, Wp, ok, is_ref, c)
        p01 = _override(p01, labels_ptr, y0, x1, Wp, ok, is_ref, c)
        p10 = _override(p10, labels_ptr, y1, x0, Wp, ok, is_ref, c)
        p11 = _override(p11, labels_ptr, y1, x1, Wp, ok, is_ref, c)
    val = ly0[:, None] * (lx0[:, None] * p00 + lx1[:, None] * p01) + ly1[:, None] * (
        lx0[:, None] * p10 + lx1[:, None] * p11
    )
    if HAS_HIDDEN:
        hidden = tl.load(hidden_ptr + c, mask=c_ok, other=0) != 0
        val = tl.where(hidden[None, :], -1.0, val)
    val = tl.where(c_ok[None, :], val, float("-inf"))
    # The first of equal maxima, as argmax picks it (explicit: the interpreter's arg-max ignores
    # tie-break options, and the tests must see what CUDA does).
    top = tl.max(val, axis=1)
    best = tl.min(tl.where(val == top[:, None], c[None, :], Q_PAD), axis=1)
    ids = tl.load(ids_ptr + best, mask=ok, other=0)
    if HAS_USER:
        user = tl.load(user_ptr + offs, mask=ok, other=0)
        ids = tl.where(user > 0, user, ids)
    tl.store(out_ptr + offs, ids, mask=ok)


@triton.jit
def _encoder_masks_kernel(
    logits_ptr,
    labels_ptr,
    is_ref_ptr,
    grid_ptr,
    fg_ptr,
    bg_ptr,
    Q,
    NB,
    QB,
    h,
    w,
    Hp,
    Wp,
    h8,
    w8,
    up_y,
    up_x,
    down_y,
    down_x,
    HAS_OVERRIDE: tl.constexpr,
    Q_PAD: tl.constexpr,
    QB_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Encoder-map pixels ``[pid·BLOCK, +BLOCK)`` (row-major over ``h8 × w8``).

    ``logits [Q, h, w]``, ``grid [QB, h8, w8]``, ``fg [Q − NB, h8, w8]``, ``bg [QB, h8, w8]``,
    all contiguous fp32. ``up_*`` = h/Hp, w/Wp and ``down_*`` = Hp/h8, Wp/w8 in fp32.
    """
    pid = tl.program_id(0)
    n8 = h8 * w8
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n8
    oy = offs // w8
    ox = offs % w8
    c = tl.arange(0, Q_PAD)
    c_ok = c < Q
    stride_c = h * w

    y0, y1, ly0, ly1 = _source_index(oy, down_y, Hp)
    x0, x1, lx0, lx1 = _source_index(ox, down_x, Wp)
    p00 = _softmax_then_upsampled(logits_ptr, stride_c, h, w, up_y, up_x, y0, x0, ok, c, c_ok)
    p01 = _softmax_then_upsampled(logits_ptr, stride_c, h, w, up_y, up_x, y0, x1, ok, c, c_ok)
    p10 = _softmax_then_upsampled(logits_ptr, stride_c, h, w, up_y, up_x, y1, x0, ok, c, c_ok)
    p11 = _softmax_then_upsampled(logits_ptr, stride_c, h, w, up_y, up_x, y1, x1, ok, c, c_ok)
    if HAS_OVERRIDE:
        is_ref = tl.load(is_ref_ptr + c, mask=c_ok, other=0) != 0
        p00 = _override(p00, labels_ptr, y0, x0, Wp, ok, is_ref, c)
        p01 = _override(p01, labels_ptr, y0, x1, Wp, ok, is_ref, c)
        p10 = _override(p10, labels_ptr, y1, x0, Wp, ok, is_ref, c)
        p11 = _override(p11, labels_ptr, y1, x1, Wp, ok, is_ref, c)
    val = ly0[:, None] * (lx0[:, None] * p00 + lx1[:, None] * p01) + ly1[:, None] * (
        lx0[:, None] * p10 + lx1[:, None] * p11
    )
    is_fg = c_ok & (c >= NB)
    tl.store(fg_ptr + (c - NB)[None, :] * n8 + offs[:, None], val, mask=ok[:, None] & is_fg[None, :])
    rest = 1.0 - tl.sum(tl.where(is_fg[None, :], val, 0.0), axis=1)
    k = tl.arange(0, QB_PAD)
    cell = k[None, :] * n8 + offs[:, None]
    k_ok = ok[:, None] & (k < QB)[None, :]
    g = tl.load(grid_ptr + cell, mask=k_ok, other=0.0)
    tl.store(bg_ptr + cell, g * rest[:, None], mask=k_ok)


# ---------------------------------------------------------------------------------- launchers


def tail_config(num_channels: int, device: torch.device, encoder: bool = False) -> dict[str, int]:
    """Pixels per program: on CUDA 512 tile entries (``BLOCK × Q_PAD``, at least 8 pixels), so
    that the dozen or so live ``[BLOCK, Q_PAD]`` fp32 tiles stay in registers: a warp per 128
    entries, per 64 for the ``encoder`` kernel (at least 4); checked on sm_80 and sm_90
    cubins: no spills. In Triton's CPU interpreter, whose cost is per operation, 128 times as many."""
    q_pad = max(16, next_pow2(num_channels))
    entries = 512 if device.type == "cuda" else 65536
    block = max(8, entries // q_pad)
    # The encoder kernel keeps four softmaxed corners per point live: twice the warps.
    per_warp = 64 if encoder else 128
    return {"Q_PAD": q_pad, "BLOCK": block, "num_warps": max(4, block * q_pad // per_warp)}


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 4 or logits.shape[0] != 1:
        raise ValueError(f"logits must be [1, Q, h, w], got {tuple(logits.shape)}")
    if logits.dtype != torch.float32:
        raise TypeError(f"the runtime tail runs in float32, got logits of {logits.dtype}")
    return logits[0].contiguous()


def _check_override(override: ReferenceOverride | None, q: int, padded: tuple[int, int]) -> None:
    if override is None:
        return
    if tuple(override.labels.shape) != tuple(padded) or override.labels.dtype != torch.int32:
        raise ValueError(f"override labels must be [{padded[0]}, {padded[1]}] int32")
    if tuple(override.is_reference.shape) != (q,) or override.is_reference.dtype != torch.uint8:
        raise ValueError(f"override is_reference must be [{q}] uint8")


def output_id_mask(
    logits: torch.Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    size: tuple[int, int],
    ids: torch.Tensor,
    override: ReferenceOverride | None = None,
    hidden: torch.Tensor | None = None,
    user_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The output path in one kernel.

    Args:
        logits: ``[1, Q, h, w]`` float32, the decode stage's output.
        padded: ``(Hp, Wp)``, the padded processing size the logits are resized to.
        resized: ``(rh, rw)`` <= ``padded``, the part of it that holds the frame.
        size: ``(H, W)``, the frame's size.
        ids: ``[Q]`` uint8 id per channel (:func:`id_table`).
        override: this frame's references (:func:`reference_override`), or None.
        hidden: ``[Q]`` uint8, 1 for channels set to −1 before the arg-max (objects the
            user annotated on this frame), or None.
        user_mask: ``[H, W]`` uint8, taken wherever it is > 0, or None.

    Returns:
        ``[H, W]`` uint8 object ids.
    """
    lg = _check_logits(logits)
    q, h, w = lg.shape
    hp, wp = padded
    rh, rw = resized
    fh, fw = size
    if not (0 < rh <= hp and 0 < rw <= wp and fh > 0 and fw > 0):
        raise ValueError(f"sizes do not fit: padded {padded}, resized {resized}, frame {size}")
    _check_override(override, q, padded)
    if tuple(ids.shape) != (q,) or ids.dtype != torch.uint8:
        raise ValueError(f"ids must be [{q}] uint8")
    if hidden is not None and (tuple(hidden.shape) != (q,) or hidden.dtype != torch.uint8):
        raise ValueError(f"hidden must be [{q}] uint8")
    if user_mask is not None and (tuple(user_mask.shape) != (fh, fw) or user_mask.dtype != torch.uint8):
        raise ValueError(f"user_mask must be [{fh}, {fw}] uint8")

    out = torch.empty((fh, fw), dtype=torch.uint8, device=lg.device)
    cfg = tail_config(q, lg.device)
    unused = ids  # a valid pointer for the arguments a constexpr switches off
    kernel = launchable(_output_id_mask_kernel, lg.device)
    kernel[(cdiv(fh * fw, cfg["BLOCK"]),)](
        lg,
        unused if override is None else override.labels,
        unused if override is None else override.is_reference,
        unused if hidden is None else hidden,
        ids,
        unused if user_mask is None else user_mask.contiguous(),
        out,
        q, h, w, wp, rh, rw, fh, fw,
        resample_scale(h, hp), resample_scale(w, wp), resample_scale(rh, fh), resample_scale(rw, fw),
        HAS_OVERRIDE=override is not None, HAS_HIDDEN=hidden is not None, HAS_USER=user_mask is not None,
        **cfg,
    )  # fmt: skip
    return out


def encoder_masks(
    logits: torch.Tensor,
    padded: tuple[int, int],
    num_bg_channels: int,
    grid: torch.Tensor,
    override: ReferenceOverride | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The internal path in one kernel.

    Args:
        logits: ``[1, Q, h, w]`` float32, the decode stage's output.
        padded: ``(Hp, Wp)``, the padded processing size.
        num_bg_channels: ``K + Qb``, the channels before the first object.
        grid: ``[Qb, h8, w8]`` float32, the background grid cut at the encoder's size
            (which it gives: ``h8 × w8``).
        override: this frame's references (:func:`reference_override`), or None.

    Returns:
        ``fg [1, I, h8, w8]`` (``I = Q − num_bg_channels``) and ``bg [1, Qb, h8, w8]``,
        float32, contiguous: what the encode stage takes.
    """
    lg = _check_logits(logits)
    q, h, w = lg.shape
    hp, wp = padded
    qb, h8, w8 = grid.shape
    if grid.dtype != torch.float32:
        raise TypeError(f"grid must be float32, got {grid.dtype}")
    if not 0 < qb < num_bg_channels <= q:
        raise ValueError(f"{q} channels, {num_bg_channels} before the objects and {qb} grid cells do not fit")
    _check_override(override, q, padded)
    grid = grid.contiguous()
    fg = torch.empty((1, q - num_bg_channels, h8, w8), dtype=torch.float32, device=lg.device)
    bg = torch.empty((1, qb, h8, w8), dtype=torch.float32, device=lg.device)
    if h8 * w8 == 0:
        return fg, bg
    cfg = tail_config(q, lg.device, encoder=True)
    kernel = launchable(_encoder_masks_kernel, lg.device)
    kernel[(cdiv(h8 * w8, cfg["BLOCK"]),)](
        lg,
        grid if override is None else override.labels,
        grid if override is None else override.is_reference,
        grid, fg, bg,
        q, num_bg_channels, qb, h, w, hp, wp, h8, w8,
        resample_scale(h, hp), resample_scale(w, wp), resample_scale(hp, h8), resample_scale(wp, w8),
        HAS_OVERRIDE=override is not None, QB_PAD=next_pow2(qb), **cfg,
    )  # fmt: skip
    return fg, bg
