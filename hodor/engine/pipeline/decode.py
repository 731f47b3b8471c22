"""The first stage: frames read (decoded by PyAV's own threads, or loaded by Pillow) on a thread
of their own, ahead of the device, into a bounded channel.

On CUDA each frame is copied into a pinned buffer here, so that the device stage can upload
it asynchronously; on the CPU the decoded array goes on as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from hodor.engine.io.staging import Incomplete
from hodor.engine.pipeline.completion import Completion
from hodor.engine.pipeline.control import Aborted, Channel, Stop
from hodor.engine.pipeline.host_buffers import HostBuffer, HostBufferPool


@dataclass(eq=False)
class DecodedFrame:
    """Frame ``index``: ``array [H,W,3]`` uint8 RGB, in ``pinned`` when it has a pinned buffer."""

    index: int
    array: np.ndarray
    pinned: HostBuffer | None = None


class Decoder:
    """Reads ``frames`` into ``out`` until they end, the intake is closed or the run is aborted.

    ``pinned_buffers``: how many pinned buffers to recycle (0: none, on the CPU). ``shortfall``
    is how a video fell short of its declared frames, once the reading has ended (for readers
    that say so, like :class:`hodor.engine.io.frames.FrameReader`).
    """

    def __init__(
        self,
        frames: Iterable[np.ndarray],
        out: Channel[DecodedFrame],
        completion: Completion,
        stop: Stop,
        pinned_buffers: int = 0,
    ) -> None:
        self.frames = frames
        self.out = out
        self.completion = completion
        self.stop = stop
        self.pinned_buffers = pinned_buffers
        self.shortfall: Incomplete | None = None
        self.count = 0
        self._pool: HostBufferPool | None = None

    def run(self) -> None:
        reader: Iterator[np.ndarray] = iter(self.frames)
        try:
            self._read(reader)
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()

    def _read(self, reader: Iterator[np.ndarray]) -> None:
        for frame in reader:
            if self.stop.intake_closed:
                break
            index = self.count
            self.completion.decoded(index, time.perf_counter())
            try:
                self.out.put(self._carry(index, frame))
            except Aborted:
                self.completion.dropped(index)
                raise
            self.count += 1
        else:
            shortfall = getattr(reader, "shortfall", None)
            self.shortfall = shortfall() if shortfall is not None else None
        self.out.close()

    def _carry(self, index: int, frame: np.ndarray) -> DecodedFrame:
        if not self.pinned_buffers or not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            return DecodedFrame(index, frame)
        if self._pool is None:
            self._pool = HostBufferPool(self.pinned_buffers, frame.shape, self.stop)
        if frame.shape != self._pool.shape:
            return DecodedFrame(index, frame)  # the device stage reports the odd size
        buffer = self._pool.acquire()
        np.copyto(buffer.array, frame)
        return DecodedFrame(index, buffer.array, buffer)


def pinned_buffer_count(device: torch.device, queued: int) -> int:
    """Pinned frame buffers for a channel of ``queued`` frames: those, the one being filled and
    the one being uploaded (none off CUDA)."""
    return queued + 2 if device.type == "cuda" else 0
