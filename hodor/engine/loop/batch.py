"""Many videos segmented together: one backbone call over one frame of each, one ``encode`` and one
``decode`` call per group of videos of the same padded frame size (docs/design.md, "Many videos").

Each video keeps its own state (:class:`~hodor.engine.loop.video.VideoState`: objects, descriptor
ring, frame count), so memory per video is bounded by its window as for a
:class:`~hodor.engine.loop.session.VideoSession`, and each video's masks are those it gets alone
(up to the rounding of batched reductions, see docs/design.md, "Stages"). The per-frame work is
the same function, :func:`~hodor.engine.loop.frame_step.step_frames`, called per group.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from hodor.engine.backends.base import Backend
from hodor.engine.loop.frame_step import FrameTask, step_frames
from hodor.engine.loop.session import DEFAULT_TEMPORAL_WINDOW
from hodor.engine.loop.video import Frame, VideoState
from hodor.errors import HodorError


@dataclass
class VideoClip:
    """A whole video for :meth:`BatchSession.run`: its frames (read lazily, one per step) and its
    reference masks by frame index."""

    frames: Iterable[Frame]
    masks: Mapping[int, np.ndarray] = field(default_factory=dict)


class BatchSession:
    """Segments several videos at once, each from its own reference masks, one frame of each per step.

    Videos join with :meth:`add` and leave with :meth:`remove`, between steps; each is named by a
    key of the caller's choice. :meth:`step` takes the next frame of some or all of them (a video
    with no frame in a step does not advance) and their reference masks, if any; videos may have
    different frame sizes, objects, references and frame counts. Videos whose frames pad to the
    same size are batched in one call of each stage; other sizes form other groups.

    ``step`` returns numpy arrays; ``step_device`` the id masks as uint8 tensors on the backend's
    device without waiting for them, and nothing in a step without reference masks waits for the
    device (as :meth:`VideoSession.step_device <hodor.engine.loop.session.VideoSession.step_device>`).
    :meth:`run` drives whole clips together, each leaving the batch when its frames end.

    A backend may limit the videos per call (an export's ``--max-streams``): a step that would
    exceed it raises ``HodorError`` before any video advances, as does a frame of the wrong size.
    Reference masks are checked per group, before the group's first stage call; after any other
    ``HodorError`` the videos of the step are best removed and added again.
    """

    def __init__(self, backend: Backend, temporal_window: int = DEFAULT_TEMPORAL_WINDOW) -> None:
        if temporal_window < 1:
            # With no past frame in the window nothing carries an object from one frame to the next.
            raise HodorError(f"temporal window must be >= 1, got {temporal_window}")
        self.backend = backend
        self.config = backend.config
        self.device = backend.device
        self.temporal_window = temporal_window
        self._videos: dict[Hashable, VideoState] = {}

    # ------------------------------------------------------------------ membership

    @property
    def names(self) -> tuple[Hashable, ...]:
        """The videos in the batch, in the order they joined."""
        return tuple(self._videos)

    def __len__(self) -> int:
        return len(self._videos)

    def __contains__(self, name: object) -> bool:
        return name in self._videos

    def add(self, name: Hashable) -> None:
        """A new video joins the batch (its next frame is its frame 0)."""
        if name in self._videos:
            raise HodorError(f"video {name!r} is already in the batch")
        self._videos[name] = VideoState(self.config, self.device, self.temporal_window)

    def remove(self, name: Hashable) -> None:
        """Video ``name`` leaves the batch; its state (descriptors, objects) is dropped."""
        self._video(name)
        del self._videos[name]

    def reset(self) -> None:
        """Every video leaves the batch."""
        self._videos.clear()

    def video(self, name: Hashable) -> VideoState:
        """Video ``name``'s state (objects, frame count, geometry): for reading."""
        return self._video(name)

    def _video(self, name: Hashable) -> VideoState:
        try:
            return self._videos[name]
        except KeyError:
            raise HodorError(f"no video {name!r} in the batch (add it first)") from None

    # ------------------------------------------------------------------ stepping

    def step(
        self, frames: Mapping[Hashable, Frame], masks: Mapping[Hashable, np.ndarray] | None = None
    ) -> dict[Hashable, np.ndarray]:
        """The next frame of each video in ``frames`` (name -> ``[H,W,3]`` uint8 RGB), with the
        reference ``masks`` (name -> ``[H,W]`` ids) given at those frames -> name -> id mask
        ``[H,W]`` uint8, in the order of ``frames``."""
        return {name: ids.cpu().numpy() for name, ids in self.step_device(frames, masks).items()}

    def step_device(
        self, frames: Mapping[Hashable, Frame], masks: Mapping[Hashable, np.ndarray] | None = None
    ) -> dict[Hashable, torch.Tensor]:
        """:meth:`step`, but each id mask stays a tensor on the backend's device, produced without
        waiting for the device (see :meth:`VideoSession.step_device
        <hodor.engine.loop.session.VideoSession.step_device>` for the stream and pinned-memory rules)."""
        masks = masks or {}
        stray = [name for name in masks if name not in frames]
        if stray:
            raise HodorError(f"a mask is given for video {stray[0]!r}, but no frame of it in this step")
        groups: dict[tuple[int, int], list[tuple[Hashable, FrameTask]]] = {}
        for name, frame in frames.items():
            video = self._video(name)
            padded = video.check_frame(frame, video.frame_index).padded
            groups.setdefault(padded, []).append((name, FrameTask(video, frame, masks.get(name))))
        for padded, members in groups.items():
            # Before any video advances: a batch the backend cannot take changes nothing.
            self.backend.check_limits(1, 1, *padded, streams=len(members))
        results: dict[Hashable, torch.Tensor] = {}
        for members in groups.values():
            names = [name for name, _ in members]
            outputs = step_frames(self.backend, [task for _, task in members])
            results.update(zip(names, outputs, strict=True))
        return {name: results[name] for name in frames}

    def run(self, clips: Mapping[Hashable, VideoClip]) -> Iterator[dict[Hashable, np.ndarray]]:
        """Segment whole clips together from their first frames (the batch is emptied first): yields,
        per step, name -> id mask ``[H,W]`` uint8 of every clip that still had a frame. A clip
        whose frames end leaves the batch; the others go on."""
        for step in self.run_device(clips):
            yield {name: ids.cpu().numpy() for name, ids in step.items()}

    def run_device(self, clips: Mapping[Hashable, VideoClip]) -> Iterator[dict[Hashable, torch.Tensor]]:
        """:meth:`run`, yielding each id mask as a tensor on the backend's device without waiting
        for it (as :meth:`step_device`). One frame of each clip is read per step."""
        self.reset()
        pending: dict[Hashable, tuple[Iterator[Frame], dict[int, np.ndarray]]] = {}
        for name, clip in clips.items():
            masks = dict(clip.masks)
            for t in masks:
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
                    raise HodorError(f"video {name!r}: mask frame indices must be integers >= 0, got {t!r}")
            pending[name] = (iter(clip.frames), masks)
            self.add(name)
        while pending:
            frames: dict[Hashable, Frame] = {}
            for name, (frame_iter, masks) in list(pending.items()):
                frame = next(frame_iter, None)
                if frame is None:
                    self._finish(name, masks)
                    del pending[name]
                else:
                    frames[name] = frame
            if not frames:
                break
            step_masks = {}
            for name in frames:
                mask = pending[name][1].get(self._videos[name].frame_index)
                if mask is not None:
                    step_masks[name] = mask
            yield self.step_device(frames, step_masks)

    def _finish(self, name: Hashable, masks: dict[int, np.ndarray]) -> None:
        """Clip ``name`` ended: it leaves the batch, after checking that every mask found its frame."""
        frames_seen = self._videos[name].frame_index
        self.remove(name)
        unused = sorted(t for t in masks if t >= frames_seen)
        if unused:
            raise HodorError(
                f"video {name!r}: a mask is bound to frame {unused[0]}, but the clip has only "
                f"{frames_seen} frames"
            )
