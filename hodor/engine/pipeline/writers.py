"""The last stage: mask files from a pool of threads, and the overlay video from one.

PNG encoding runs on several threads at once (Pillow releases the GIL while it compresses);
the overlay is encoded in frame order by one thread, with the encoder's own threads behind
it. Each writer first waits for its frame's copy to the host: the only point where a frame's
result makes the host wait for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from hodor.engine.io.overlay import OverlayWriter
from hodor.engine.pipeline.completion import Completion
from hodor.engine.pipeline.control import END, Channel
from hodor.engine.pipeline.host_buffers import HostCopy
from hodor.engine.pipeline.outputs import MASK, OVERLAY, Outputs
from hodor.errors import HodorError


@dataclass(eq=False)
class MaskJob:
    """Frame ``index``'s id mask ``[H,W]`` uint8, to be written as ``<name>.png``."""

    index: int
    name: str
    ids: HostCopy


@dataclass(eq=False)
class OverlayJob:
    """Frame ``index`` with its objects blended in, ``[H,W,3]`` uint8 RGB."""

    index: int
    image: HostCopy


def write_masks(jobs: Channel[MaskJob], outputs: Outputs, completion: Completion) -> None:
    """One mask writer: takes jobs until the channel ends."""
    assert outputs.masks_dir is not None
    while (job := jobs.get()) is not END:
        try:
            ids = job.ids.wait()
            outputs.write_mask(outputs.masks_dir / f"{job.name}.png", ids, outputs.palette)
        finally:
            job.ids.release()
        completion.finished(job.index, MASK)


class OverlayEncoder:
    """The overlay writer's thread: frames in order into ``outputs.overlay``, closed at the end.

    The video is opened at the first frame (its size is the frames'); whatever stops the thread
    before the end removes the unfinished file.
    """

    def __init__(self, outputs: Outputs, completion: Completion, threads: int = 0) -> None:
        assert outputs.overlay is not None
        self.outputs = outputs
        self.completion = completion
        self.threads = threads  # the encoder's threads; 0: FFmpeg's choice
        self._writer: OverlayWriter | None = None

    def run(self, jobs: Channel[OverlayJob]) -> None:
        finished = False
        try:
            while (job := jobs.get()) is not END:
                try:
                    self._write(job.image.wait())
                finally:
                    job.image.release()
                self.completion.finished(job.index, OVERLAY)
            if self._writer is not None:
                self._guarded(self._writer.close)
            finished = True
        finally:
            if not finished and self._writer is not None:
                self._writer.abort()

    def _write(self, image: np.ndarray) -> None:
        if self._writer is None:
            out = self.outputs
            assert out.overlay is not None
            self._writer = OverlayWriter(
                out.overlay, out.fps, image.shape[0], image.shape[1], out.palette, threads=self.threads
            )
        self._guarded(lambda: self._writer.write_image(image))

    def _guarded(self, action) -> None:
        try:
            action()
        except (av.error.FFmpegError, OSError) as exc:
            raise HodorError(f"cannot write {self.outputs.overlay}: {exc}") from None
