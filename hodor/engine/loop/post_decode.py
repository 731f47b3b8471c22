"""From the decoder's logits to what the loop needs next: the frame's id mask and the maps to re-encode.

:func:`masks_from_logits` is the whole per-frame computation between ``decode`` and
``encode`` (docs/design.md, "The per-video loop"), in float32:

- output path: logits ↑4 (bilinear) → softmax → reference override → crop the padding →
  bilinear to the frame's size → arg-max → object ids;
- internal path: softmax at 1/4 → ↑4 → reference override → ↓8 → object probabilities,
  and the background grid weighted by what the objects leave (``grid · (1 − Σ fg)``).

Its arguments are plain tensors, integers and tuples (the reference masks in a named tuple of
those), so that a fused implementation elsewhere (``hodor/kernels``, which imports nothing from
the engine) can take the same signature and replace it one for one
(``tests/test_engine_post_decode.py`` states what it must give, to the bit). A replacement may
cover the steady state alone (``references`` None): the session then keeps this function for
the frames that carry a reference.

:func:`fused_masks_from_logits` is such a replacement: both paths as two Triton kernels
(``hodor/kernels/runtime_tail.py``), reference frames included.
:func:`~hodor.engine.loop.native_tail.native_masks_from_logits` is another, for the CPU: the
steady state as one compiled pass (``native_tail.cpp``). :func:`post_decode_for` picks one for a
backend: the kernels where the backend says ``runtime_tail = "triton"`` (the torch backend on
CUDA with ``kernels="triton"``), the compiled pass for backends on the CPU, this module's torch
code everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from hodor.engine.loop.masks import ids_from_maps, override_in_place, resample
from hodor.engine.loop.native_tail import native_masks_from_logits

DECODER_STRIDE = 4  # logits come at 1/4 of the padded frame
ENCODER_STRIDE = 8  # descriptors are encoded from 1/8 features and masks


class FrameReferences(NamedTuple):
    """The reference masks a frame carries, as :func:`masks_from_logits` applies them.

    Objects are named by their slot: channel ``num_bg_channels + slot`` of the logits.
    ``override_slots``: each kept reference object, in the order the overrides apply;
    ``override_masks [R,Hp,Wp]`` bool: their resized, padded masks (R = ``len(override_slots)``,
    may be 0). ``shown_slots``: the decoded objects annotated at this frame, which the output shows
    as the user drew them (they are taken out of the arg-max). ``user_mask [H,W]`` uint8: the
    user's mask, copied to the output wherever it is not 0.
    """

    override_slots: tuple[int, ...]
    override_masks: torch.Tensor
    shown_slots: tuple[int, ...]
    user_mask: torch.Tensor


class DecodedMasks(NamedTuple):
    """``id_mask [H,W]`` uint8 (the frame's output), ``fg [I,h,w]`` and ``bg [Qb,h,w]`` float32
    (contiguous; the probabilities to re-encode at 1/8, ``h, w = Hp/8, Wp/8``)."""

    id_mask: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor


def masks_from_logits(
    logits: torch.Tensor,
    num_bg_channels: int,
    id_lookup: torch.Tensor,
    bg_grid: torch.Tensor,
    resized_size: tuple[int, int],
    frame_size: tuple[int, int],
    references: FrameReferences | None = None,
) -> DecodedMasks:
    """The post-decode computation of one frame.

    ``logits [1, 1+Qb+I, Hp/4, Wp/4]`` float32 (catch-all, background, objects);
    ``num_bg_channels`` = 1 + Qb; ``id_lookup [1+Qb+I]`` uint8, the id each channel shows
    (0 for the catch-all and background); ``bg_grid [Qb, Hp/8, Wp/8]`` float32, the background
    grid cut at 1/8; ``resized_size`` = (Hr, Wr), the resized frame inside the padded
    ``Hp x Wp``; ``frame_size`` = (H, W), the frame's own size; ``references``: the frame's
    reference masks, or None (the steady state).

    Returns :class:`DecodedMasks`: ``id_mask [H,W]`` uint8, ``fg [I,Hp/8,Wp/8]``,
    ``bg [Qb,Hp/8,Wp/8]`` float32, all on ``logits``' device and freshly allocated. Nothing
    here waits for the device when ``references`` is None.
    """
    nb = num_bg_channels
    padded = (logits.shape[-2] * DECODER_STRIDE, logits.shape[-1] * DECODER_STRIDE)
    encoder_size = (padded[0] // ENCODER_STRIDE, padded[1] // ENCODER_STRIDE)
    overrides = []
    if references is not None:
        overrides = list(zip(references.override_slots, references.override_masks.unbind(0), strict=True))

    # Output path: upsample the logits, then softmax, override, un-pad, resize to the frame.
    probs_out = torch.softmax(resample(logits, padded), 1)[0]
    override_in_place(probs_out, nb, overrides)
    probs_out = probs_out[:, : resized_size[0], : resized_size[1]]
    probs_out = resample(probs_out[None], frame_size)[0]
    if references is not None and references.shown_slots:
        # Objects annotated here are shown exactly as the user drew them.
        probs_out[[nb + slot for slot in references.shown_slots]] = -1.0
    id_mask = ids_from_maps(probs_out, id_lookup)
    if references is not None:
        id_mask = torch.where(references.user_mask > 0, references.user_mask, id_mask)

    # Internal path: softmax at 1/4, upsample, override, down to the encoder's 1/8.
    probs = resample(torch.softmax(logits, 1), padded)[0]
    override_in_place(probs, nb, overrides)
    probs = resample(probs[None], encoder_size)[0]
    fg = probs[nb:]
    bg = bg_grid * (1.0 - fg.sum(0, keepdim=True))
    return DecodedMasks(id_mask=id_mask, fg=fg, bg=bg)


def fused_masks_from_logits(
    logits: torch.Tensor,
    num_bg_channels: int,
    id_lookup: torch.Tensor,
    bg_grid: torch.Tensor,
    resized_size: tuple[int, int],
    frame_size: tuple[int, int],
    references: FrameReferences | None = None,
) -> DecodedMasks:
    """:func:`masks_from_logits` in two Triton kernels, one per path (same arguments, same result).

    The id mask is the torch path's except where two channels' probabilities agree to a few
    fp32 ulps (the arg-max may then pick the other); ``fg`` and ``bg`` agree to fp32 rounding.
    Runs where Triton runs (CUDA, or its CPU interpreter). On a reference frame it builds the
    kernels' label map on the device and uploads one small channel table; without references
    nothing is uploaded and nothing waits for the device.
    """
    from hodor.kernels import runtime_tail as tail

    nb = num_bg_channels
    q = logits.shape[1]
    padded = (logits.shape[-2] * DECODER_STRIDE, logits.shape[-1] * DECODER_STRIDE)
    override = hidden = user_mask = None
    if references is not None:
        pairs = list(zip(references.override_slots, references.override_masks.unbind(0), strict=True))
        override = tail.reference_override(q, nb, pairs)
        if references.shown_slots:
            hidden = tail.channel_flags(q, [nb + slot for slot in references.shown_slots], logits.device)
        user_mask = references.user_mask
    id_mask = tail.output_id_mask(
        logits, padded, resized_size, frame_size, id_lookup, override, hidden, user_mask
    )
    fg, bg = tail.encoder_masks(logits, padded, nb, bg_grid, override)
    return DecodedMasks(id_mask=id_mask, fg=fg[0], bg=bg[0])


PostDecode = Callable[..., DecodedMasks]
"""The signature of :func:`masks_from_logits` (and of :func:`fused_masks_from_logits`)."""

RUNTIME_TAILS: dict[str, PostDecode] = {
    "torch": masks_from_logits,
    "triton": fused_masks_from_logits,
    "native": native_masks_from_logits,
}


def post_decode_for(backend: object) -> PostDecode:
    """The post-decode a backend asks for through its optional ``runtime_tail`` attribute
    (``"torch"``, ``"triton"`` or ``"native"``); without one, ``"native"`` for a backend on the
    CPU (its ``device``), ``"torch"`` elsewhere."""
    device = getattr(backend, "device", None)
    on_cpu = device is not None and torch.device(device).type == "cpu"
    name = getattr(backend, "runtime_tail", "native" if on_cpu else "torch")
    if name not in RUNTIME_TAILS:
        raise ValueError(f"unknown runtime tail {name!r}: one of {', '.join(RUNTIME_TAILS)}")
    return RUNTIME_TAILS[name]
