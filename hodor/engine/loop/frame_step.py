"""One frame of each of several videos through the network: the loop's per-frame logic (docs/design.md,
"The per-video loop"), shared by :class:`~hodor.engine.loop.session.VideoSession` (one video) and
:class:`~hodor.engine.loop.batch.BatchSession` (many).

:func:`step_frames` takes a frame of each video (and its reference mask, if any) and calls each
stage once for all of them: the backbone over the frames that need features, ``encode`` over
the reference masks given at this frame, ``decode`` over the videos that had objects, and
``encode`` again over those videos' predictions. Objects are padded to the largest count and
histories to the longest, padding marked invalid (the seam's batch contract,
:mod:`hodor.engine.backends.base`). With one video nothing is padded and the stage inputs are
exactly those of a video on its own. The post-decode (:func:`~hodor.engine.loop.post_decode.
masks_from_logits`) runs per video, on its own rows and channels of the logits.

Between frames without a reference nothing here waits for the device or uploads anything
but the frames: tensors are addressed by Python integers and slices, never by host-built
index tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hodor.config import CHANNELS
from hodor.engine.backends.base import Backend
from hodor.engine.loop.masks import resample
from hodor.engine.loop.post_decode import ENCODER_STRIDE, FrameReferences, post_decode_for
from hodor.engine.loop.video import Frame, Reference, VideoState
from hodor.errors import HodorError

Features = tuple[torch.Tensor, torch.Tensor]
"""``f4 [B,C,Hp/4,Wp/4]``, ``f8 [B,C,Hp/8,Wp/8]``: backbone features of B frames."""


class TinyObjectWarning(UserWarning):
    """A reference object vanished at the encoder's resolution and is not tracked."""


@dataclass
class FrameTask:
    """The next frame of one video: ``frame [H,W,3]`` uint8, its reference ``mask [H,W]`` (or None),
    and its backbone ``features`` (``[1,…]`` each) when the caller computed them already."""

    video: VideoState
    frame: Frame
    mask: np.ndarray | None = None
    features: Features | None = None


@dataclass
class _Active:
    """A task whose frame goes through the network, with what this step learns about it."""

    task: FrameTask
    index: int  # its place among the step's tasks
    reference: Reference | None
    had_objects: bool
    row: int  # its row in the step's features
    kept_ids: tuple[int, ...] = ()  # reference objects kept (large enough at 1/8)
    kept_masks: torch.Tensor | None = None  # their padded masks [R,Hp,Wp] bool
    fg_small: torch.Tensor | None = None  # their masks at 1/8 [R,h,w] float32
    bg_small: torch.Tensor | None = None  # the background grid at 1/8, cleared under them [Qb,h,w]

    @property
    def video(self) -> VideoState:
        return self.task.video

    @property
    def t(self) -> int:
        return self.task.video.frame_index


@torch.inference_mode()
def step_frames(backend: Backend, tasks: Sequence[FrameTask]) -> list[torch.Tensor]:
    """Process the next frame of each task's video; return each frame's id mask ``[H,W]`` uint8
    on the backend's device (new tensors, produced without waiting for the device).

    The videos must be distinct and their frames of one padded size (one backbone batch).
    Every input is checked before the first stage call; a ``HodorError`` raised later (a limit
    of the backend) leaves the videos' states undefined.
    """
    if len({id(task.video) for task in tasks}) != len(tasks):
        raise ValueError("a video appears twice in one step")
    outputs: list[torch.Tensor | None] = [None] * len(tasks)
    active: list[_Active] = []
    padded_size = None
    for k, task in enumerate(tasks):
        video = task.video
        geometry = video.check_frame(task.frame, video.frame_index)
        if padded_size is not None and geometry.padded != padded_size:
            raise ValueError(f"frames of padded sizes {padded_size} and {geometry.padded} in one step")
        padded_size = geometry.padded
        reference = video.prepare_reference(task.mask) if task.mask is not None else None
        had_objects = video.objects.has_objects
        if not had_objects and reference is None:
            # Before the video's first reference: nothing to segment, no network call.
            outputs[k] = torch.zeros(geometry.size, dtype=torch.uint8, device=video.device)
            continue
        active.append(_Active(task, k, reference, had_objects, row=len(active)))

    if active:
        assert padded_size is not None
        f4, f8 = _features(backend, [a.task for a in active])
        with_reference = [a for a in active if a.reference is not None]
        if with_reference:
            _encode_references(backend, with_reference, f8, padded_size)
        decoding = [a for a in active if a.had_objects]
        decoded = _propagate(backend, decoding, f4, f8, padded_size) if decoding else {}
        for a in active:
            if a.had_objects:
                outputs[a.index] = decoded[a.row]
            else:
                # First reference of the video: nothing to decode yet; the output is the reference.
                assert a.reference is not None
                outputs[a.index] = a.reference.user_mask
    for task in tasks:
        task.video.frame_index += 1
    done = [out for out in outputs if out is not None]
    assert len(done) == len(tasks)
    return done


# ---------------------------------------------------------------------- helpers


def _rows(x: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """``x[rows]`` along the first axis without a host-built index tensor: ``x`` itself when ``rows``
    are all of its rows in order, a view for a run of consecutive rows, else a concatenation."""
    rows = list(rows)
    if rows == list(range(x.shape[0])):
        return x
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return x[rows[0] : rows[0] + len(rows)]
    return torch.cat([x[r : r + 1] for r in rows], 0)


def _padding_mask(counts: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[B, max(counts)]`` bool, True past each item's count (its padding); built on the device by fills."""
    invalid = torch.zeros(len(counts), max(counts), dtype=torch.bool, device=device)
    for b, count in enumerate(counts):
        if count < invalid.shape[1]:
            invalid[b, count:].fill_(True)
    return invalid


def _stack_padded(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Maps ``[I_b,h,w]`` -> ``[B, max I_b, h, w]`` contiguous, zeros past each item's maps (padding
    objects)."""
    most = max(m.shape[0] for m in maps)
    if all(m.shape[0] == most for m in maps):
        return maps[0][None].contiguous() if len(maps) == 1 else torch.stack(list(maps), 0)
    out = maps[0].new_zeros(len(maps), most, *maps[0].shape[1:])
    for b, m in enumerate(maps):
        out[b, : m.shape[0]].copy_(m)
    return out


def transient_features(backend: Backend, images: torch.Tensor) -> Features:
    """The backbone's features of ``images``, to be used before the backend's next backbone call:
    its ``backbone_transient`` where it has one (a CUDA-graph backbone's own output buffers, which
    its encode and decode graphs read in place), else its ``backbone``."""
    transient = getattr(backend, "backbone_transient", None)
    return transient(images) if transient is not None else backend.backbone(images)


def _features(backend: Backend, tasks: Sequence[FrameTask]) -> Features:
    """Backbone features of the tasks' frames, one row per task: one backbone call over the frames
    whose features the caller did not give."""
    missing = [task for task in tasks if task.features is None]
    computed: Features | None = None
    if missing:
        images = [task.video.network_input([task.frame], task.video.frame_index) for task in missing]
        computed = transient_features(backend, images[0] if len(images) == 1 else torch.cat(images, 0))
        if len(missing) == len(tasks):
            return computed
    if not missing and len(tasks) == 1:
        assert tasks[0].features is not None
        return tasks[0].features
    f4, f8, k = [], [], 0
    for task in tasks:
        if task.features is not None:
            f4.append(task.features[0])
            f8.append(task.features[1])
        else:
            assert computed is not None
            f4.append(computed[0][k : k + 1])
            f8.append(computed[1][k : k + 1])
            k += 1
    return torch.cat(f4, 0), torch.cat(f8, 0)


# ---------------------------------------------------------------------- reference masks


def _encode_references(
    backend: Backend, active: Sequence[_Active], f8: torch.Tensor, padded_size: tuple[int, int]
) -> None:
    """Encode the objects annotated at this frame of each video (one ``encode`` call for all) and store
    their descriptors; set each one's ``kept_ids`` and ``kept_masks``.

    The background grid is cut at full padded resolution and cleared wherever any annotated object
    is, including objects about to be dropped as too small.
    """
    encoding: list[_Active] = []
    for a in active:
        _reference_at_encoder_size(a)
        if a.kept_ids:
            encoding.append(a)
    if not encoding:
        return
    fg = _stack_padded([a.fg_small for a in encoding])  # type: ignore[misc]
    backend.check_limits(fg.shape[1], 1, *padded_size, streams=len(encoding))
    fg_desc, bg_desc = backend.encode(
        _rows(f8, [a.row for a in encoding]),
        fg,
        _stack_padded([a.bg_small for a in encoding]),  # type: ignore[misc]
        _padding_mask([len(a.kept_ids) for a in encoding], fg.device),
    )
    for b, a in enumerate(encoding):
        a.video.ring.put_objects(a.t, a.kept_ids, fg_desc[b, : len(a.kept_ids)])
        if not a.had_objects:
            # Background descriptors are stored only for the first objects of the video.
            a.video.ring.put_background(a.t, bg_desc[b])
        a.video.objects.add(a.kept_ids)


def _reference_at_encoder_size(a: _Active) -> None:
    """The reference's masks and background grid at 1/8; drop (with a warning) objects that vanish
    there, and refuse a first reference that keeps none."""
    video, reference = a.video, a.reference
    assert reference is not None and video.geometry is not None and video.grid_full is not None
    padded = reference.padded  # [I,Hp,Wp] bool
    background = padded.logical_not().all(0)
    grid = torch.where(background[None], video.grid_full, torch.zeros_like(video.grid_full))
    stacked = torch.cat([grid, padded.to(torch.float32)], 0)[None]
    small = resample(stacked, video.geometry.at_stride(ENCODER_STRIDE))[0]  # [Qb+I,h,w]
    bg_small, fg_small = small[: video.num_bg], small[video.num_bg :]

    keep = (fg_small.flatten(1) > 0.5).any(1).tolist()
    kept_ids = tuple(i for i, k in zip(reference.ids, keep, strict=True) if k)
    dropped = [i for i, k in zip(reference.ids, keep, strict=True) if not k]
    if dropped:
        if not a.had_objects and not kept_ids:
            raise HodorError(
                f"every object of the first reference mask (frame {a.t}, ids {dropped}) is too small "
                "to track at this resolution (no pixel left at 1/8 scale); "
                "give larger masks or raise --min-dim"
            )
        warnings.warn(
            f"frame {a.t}: object(s) {dropped} too small to track at this resolution "
            f"(no pixel left at 1/8 scale); ignored",
            TinyObjectWarning,
            stacklevel=4,
        )
    keep_t = torch.tensor(keep, dtype=torch.bool).to(video.device)
    a.kept_ids = kept_ids
    a.kept_masks = padded[keep_t]
    a.fg_small = fg_small[keep_t].contiguous()
    a.bg_small = bg_small.contiguous()


# ---------------------------------------------------------------------- decode and re-encode


def _propagate(
    backend: Backend,
    decoding: Sequence[_Active],
    f4: torch.Tensor,
    f8: torch.Tensor,
    padded_size: tuple[int, int],
) -> dict[int, torch.Tensor]:
    """Decode this frame of each video from its history (one ``decode`` call), make its id mask,
    re-encode every object from the prediction (one ``encode`` call) and store the descriptors.

    Returns each video's id mask ``[H,W]`` by its feature row.
    """
    device = f4.device
    sizes = [a.video.ring.history_size(a.t) for a in decoding]  # (I, T) each
    num_objects = max(i for i, _ in sizes)
    length = max(t for _, t in sizes)
    num_bg = decoding[0].video.num_bg
    shape = (len(decoding), num_bg + num_objects, length)
    if all(size == (num_objects, length) for size in sizes):
        # Every entry is written below: no padding to fill.
        descriptors = torch.empty(*shape, CHANNELS, dtype=torch.float32, device=device)
        invalid = torch.empty(*shape, dtype=torch.bool, device=device)
    else:
        descriptors = torch.zeros(*shape, CHANNELS, dtype=torch.float32, device=device)
        invalid = torch.ones(*shape, dtype=torch.bool, device=device)
    for b, a in enumerate(decoding):
        a.video.ring.write_history(a.t, descriptors[b], invalid[b])
    rows = [a.row for a in decoding]
    f4_rows, f8_rows = _rows(f4, rows), _rows(f8, rows)
    backend.check_limits(num_objects, length, *padded_size, streams=len(decoding))
    logits = backend.decode(
        f4_rows,
        f8_rows,
        descriptors[:, num_bg:],
        descriptors[:, :num_bg],
        invalid[:, num_bg:],
        invalid[:, :num_bg],
    )

    ids_of = [a.video.ring.ids for a in decoding]
    masks: dict[int, torch.Tensor] = {}
    fg_maps, bg_maps = [], []
    post_decode = post_decode_for(backend)
    for b, (a, ids) in enumerate(zip(decoding, ids_of, strict=True)):
        video, geometry = a.video, a.video.geometry
        assert geometry is not None and video.grid_enc is not None
        # This video's rows and channels; padding objects' channels (-inf) are left out.
        own = logits[b : b + 1, : video.num_bg_channels + len(ids)]
        decoded = post_decode(
            own,
            video.num_bg_channels,
            video.id_lookup(ids),
            video.grid_enc,
            geometry.resized,
            geometry.size,
            _frame_references(a, ids),
        )
        masks[a.row] = decoded.id_mask
        fg_maps.append(decoded.fg)
        bg_maps.append(decoded.bg)

    fg = _stack_padded(fg_maps)
    backend.check_limits(fg.shape[1], 1, *padded_size, streams=len(decoding))
    fg_desc, bg_desc = backend.encode(
        f8_rows,
        fg,
        _stack_padded(bg_maps),
        _padding_mask([len(ids) for ids in ids_of], device),
    )
    for b, (a, ids) in enumerate(zip(decoding, ids_of, strict=True)):
        a.video.ring.put_objects(a.t, ids, fg_desc[b, : len(ids)])
        a.video.ring.put_background(a.t, bg_desc[b])
    return masks


def _frame_references(a: _Active, ids: tuple[int, ...]) -> FrameReferences | None:
    """The reference masks of this frame as the post-decode applies them (None without one)."""
    if a.reference is None:
        return None
    assert a.kept_masks is not None
    return FrameReferences(
        override_slots=tuple(ids.index(i) for i in a.kept_ids),
        override_masks=a.kept_masks,
        shown_slots=tuple(ids.index(i) for i in a.reference.ids if i in ids),
        user_mask=a.reference.user_mask,
    )
