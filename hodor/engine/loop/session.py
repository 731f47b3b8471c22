"""The per-video loop (docs/design.md, "The per-video loop"): references in, one id mask per frame out.

Internal state (descriptors, the probability maps they are encoded from) follows the
official pipeline exactly. Outputs differ deliberately in two ways: a frame with a
reference shows the user's mask exactly for the objects it annotates, and frames
before the first reference are all-zero masks at the frame's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice

import numpy as np
import torch

from hodor.engine.backends.base import Backend
from hodor.engine.loop.frame_step import FrameTask, TinyObjectWarning, step_frames
from hodor.engine.loop.objects import ObjectMap
from hodor.engine.loop.preprocess import FrameGeometry
from hodor.engine.loop.ring import DescriptorRing
from hodor.engine.loop.video import Frame, VideoState
from hodor.errors import HodorError

DEFAULT_TEMPORAL_WINDOW = 7
DEFAULT_CHUNK = 16
"""Frames per backbone call of a whole-clip run on a GPU, where a batch fills the device."""
CPU_CHUNK = 1
"""Frames per backbone call of a whole-clip run on the CPU. One frame already keeps a few cores
busy, so a batch gains nothing there and holds the first mask back until it is through: at 480p
on two cores, 20-frame clips ran 1.05x (ONNX Runtime) and 1.13x (OpenVINO) faster one frame a
call than sixteen, and the first mask came after 2 s instead of 13-14 s
(``benchmarks/cpu_chunk.py``, RESULTS.md)."""

__all__ = [
    "CPU_CHUNK",
    "DEFAULT_CHUNK",
    "DEFAULT_TEMPORAL_WINDOW",
    "Frame",
    "TinyObjectWarning",
    "VideoSession",
    "default_chunk",
]


def default_chunk(device: torch.device | str) -> int:
    """The backbone batch of a whole-clip run on ``device`` when none is asked for:
    :data:`DEFAULT_CHUNK` on a GPU, :data:`CPU_CHUNK` on the CPU."""
    return CPU_CHUNK if torch.device(device).type == "cpu" else DEFAULT_CHUNK


class VideoSession:
    """Segments the objects of one video, frame by frame, from reference masks.

    ``step(frame, mask)`` for streams; ``run(frames, masks)`` for a whole clip, with
    the backbone batched over ``chunk`` frames (default: :func:`default_chunk` of the
    backend's device). Frames are ``[H,W,3]`` uint8 RGB
    numpy arrays (or tensors, see :data:`Frame`), all the same size; masks ``[H,W]``
    integer arrays of object ids (0 = background). A mask adds the objects it contains
    (or re-annotates known ones) at its frame.

    ``step`` and ``run`` return numpy arrays, so they wait for each frame's result.
    ``step_device`` and ``run_device`` return the same masks as uint8 tensors on the
    backend's device without waiting for them: on a GPU the next frame's work is queued
    while a consumer downloads the last mask. Between frames without a reference mask
    nothing in the loop waits for the device (nor uploads anything but the frame).

    The per-frame work is :func:`hodor.engine.loop.frame_step.step_frames` on this video
    alone, as :class:`~hodor.engine.loop.batch.BatchSession` runs it on many.
    """

    def __init__(
        self,
        backend: Backend,
        temporal_window: int = DEFAULT_TEMPORAL_WINDOW,
        chunk: int | None = None,
    ) -> None:
        if temporal_window < 1:
            # With no past frame in the window nothing carries an object from one frame to the next.
            raise HodorError(f"temporal window must be >= 1, got {temporal_window}")
        if chunk is not None and chunk < 1:
            raise HodorError(f"chunk must be >= 1, got {chunk}")
        self.backend = backend
        self.config = backend.config
        self.device = backend.device
        self.temporal_window = temporal_window
        self.chunk = chunk if chunk is not None else default_chunk(self.device)
        self.video = VideoState(self.config, self.device, temporal_window)

    @property
    def objects(self) -> ObjectMap:
        return self.video.objects

    @property
    def ring(self) -> DescriptorRing:
        return self.video.ring

    @property
    def geometry(self) -> FrameGeometry | None:
        return self.video.geometry

    @property
    def frame_index(self) -> int:
        """Index of the next frame."""
        return self.video.frame_index

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Forget the video: objects, descriptors, frame size and frame count."""
        self.video.reset()

    def step(self, frame: Frame, mask: np.ndarray | None = None) -> np.ndarray:
        """Process the next frame ``[H,W,3]`` uint8 RGB (and its reference ``mask [H,W]``, if any)
        -> id mask ``[H,W]`` uint8."""
        return self.step_device(frame, mask).cpu().numpy()

    def step_device(self, frame: Frame, mask: np.ndarray | None = None) -> torch.Tensor:
        """:meth:`step`, but the id mask ``[H,W]`` uint8 stays a tensor on the backend's device and
        the host does not wait for it.

        The tensor is new for each frame (the session never writes to it again). It is produced
        on the current CUDA stream: a consumer on another stream must wait for an event recorded
        after this call (and ``record_stream`` the tensor) before reading it. A ``frame`` given as
        a pinned CPU tensor is uploaded asynchronously: keep it unchanged until then too.
        """
        return self._process(frame, mask, features=None)

    def run(
        self, frames: Iterable[Frame], masks: Mapping[int, np.ndarray] | None = None
    ) -> Iterator[np.ndarray]:
        """Process a clip from its first frame (the session is reset): yields one id mask per frame.

        ``masks`` maps frame index -> reference mask. The backbone runs over ``chunk``
        frames at a time and only those frames' features are held.
        """
        for ids in self.run_device(frames, masks):
            yield ids.cpu().numpy()

    def run_device(
        self, frames: Iterable[Frame], masks: Mapping[int, np.ndarray] | None = None
    ) -> Iterator[torch.Tensor]:
        """:meth:`run`, yielding each id mask ``[H,W]`` uint8 as a tensor on the backend's device
        without waiting for it (as :meth:`step_device`)."""
        self.reset()
        masks = dict(masks or {})
        for t in masks:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
                raise HodorError(f"mask frame indices must be integers >= 0, got {t!r}")
        first_reference = min(masks) if masks else None
        frame_iter = iter(frames)
        while chunk := list(islice(frame_iter, self.chunk)):
            start = self.frame_index
            needs_features = [
                first_reference is not None and start + i >= first_reference for i in range(len(chunk))
            ]
            needed = [f for f, need in zip(chunk, needs_features, strict=True) if need]
            features = self._backbone(needed, start + needs_features.index(True) if needed else start)
            k = 0
            for i, frame in enumerate(chunk):
                feats = None
                if needs_features[i]:
                    feats = (features[0][k : k + 1], features[1][k : k + 1])
                    k += 1
                yield self._process(frame, masks.get(start + i), feats)
            # Drop this chunk's features (and the views into them) before the next backbone call.
            del features, feats, chunk
        unused = sorted(t for t in masks if t >= self.frame_index)
        if unused:
            raise HodorError(
                f"a mask is bound to frame {unused[0]}, but the clip has only {self.frame_index} frames"
            )

    # ------------------------------------------------------------------ the loop

    def _backbone(self, frames: list[Frame], first_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``[H,W,3]`` (video indices from ``first_index``) -> ``f4 [B,256,Hp/4,Wp/4]``,
        ``f8 [B,256,Hp/8,Wp/8]``; B may be 0."""
        if not frames:
            return torch.empty(0), torch.empty(0)
        return self.backend.backbone(self.video.network_input(frames, first_index))

    def _id_lookup(self, ids: tuple[int, ...]) -> torch.Tensor:
        """The channel -> id table for ``ids``, uploaded only when the objects change."""
        return self.video.id_lookup(ids)

    def _process(
        self,
        frame: Frame,
        mask: np.ndarray | None,
        features: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        (out,) = step_frames(self.backend, [FrameTask(self.video, frame, mask, features)])
        return out
