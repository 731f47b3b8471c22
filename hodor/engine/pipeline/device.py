"""The middle stage: frames up to the device, the session's stages, the overlay blend, and each
result's copy back to the host started without waiting for it.

On CUDA the frame is uploaded from its pinned buffer asynchronously (the buffer goes back to
the decoder with the upload's event), the id mask and the blended frame are made on the
device, and both are copied into pinned buffers asynchronously, with one event for the two
copies; nothing here makes the host wait for the device. On the CPU the same steps run, the
uploads and copies being no-ops.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from hodor.engine.loop.session import VideoSession
from hodor.engine.pipeline.blend import DeviceBlender
from hodor.engine.pipeline.completion import Completion
from hodor.engine.pipeline.control import END, Channel, Stop
from hodor.engine.pipeline.decode import DecodedFrame
from hodor.engine.pipeline.host_buffers import HostBuffer, HostBufferPool, HostCopy
from hodor.engine.pipeline.outputs import MASK, Outputs
from hodor.engine.pipeline.writers import MaskJob, OverlayJob
from hodor.errors import HodorError


class DeviceStage:
    """Runs ``session`` over the frames of ``frames_in`` and hands each frame's results to the
    mask writers (``mask_jobs``) and the overlay encoder (``overlay_jobs``), in frame order.

    ``live``: frame by frame (each frame's mask as soon as possible) instead of batching the
    backbone over the session's chunk; a closed intake then ends the video where it is.
    ``mask_buffers``, ``overlay_buffers``: pinned buffers for the copies to the host (CUDA).
    """

    def __init__(
        self,
        session: VideoSession,
        references: Mapping[int, np.ndarray],
        outputs: Outputs,
        completion: Completion,
        stop: Stop,
        mask_jobs: Channel[MaskJob] | None,
        overlay_jobs: Channel[OverlayJob] | None,
        live: bool = False,
        mask_buffers: int = 0,
        overlay_buffers: int = 0,
    ) -> None:
        self.session = session
        self.references = references
        self.outputs = outputs
        self.completion = completion
        self.stop = stop
        self.mask_jobs = mask_jobs
        self.overlay_jobs = overlay_jobs
        self.live = live
        self.device = session.device
        self.cuda = self.device.type == "cuda"
        self.blend = DeviceBlender(outputs.palette, self.device) if overlay_jobs is not None else None
        self._buffer_counts = (mask_buffers, overlay_buffers)
        self._mask_pool: HostBufferPool | None = None
        self._overlay_pool: HostBufferPool | None = None

    def run(self, frames_in: Channel[DecodedFrame]) -> None:
        pending: deque[tuple[int, torch.Tensor]] = deque()  # frames given to the session, for the blend

        def frames() -> Iterator[np.ndarray | torch.Tensor]:
            while (item := frames_in.get()) is not END:
                for_session, on_device = self._upload(item)
                pending.append((item.index, on_device))
                yield for_session

        masks = (
            self._frame_by_frame(frames())
            if self.live
            else self.session.run_device(frames(), self.references)
        )
        for ids in masks:
            index, frame = pending.popleft()
            self._hand_over(index, frame, ids)
        # Only at a normal end: after an error the writers must stop at once (the run is aborted),
        # not drain their queues and finish the overlay first.
        for channel in (self.mask_jobs, self.overlay_jobs):
            if channel is not None:
                channel.close()

    def _frame_by_frame(self, frames: Iterator[np.ndarray | torch.Tensor]) -> Iterator[torch.Tensor]:
        """The session stepped one frame at a time, from the first (as ``run_device`` with a chunk of 1)."""
        self.session.reset()
        for index, frame in enumerate(frames):
            yield self.session.step_device(frame, self.references.get(index))

    def _upload(self, item: DecodedFrame) -> tuple[np.ndarray | torch.Tensor, torch.Tensor]:
        """``(what the session gets, the frame on the device for the blend)``."""
        if not self.cuda:
            # The session takes numpy frames as it always has; the blend reads the same memory.
            return item.array, torch.from_numpy(item.array)
        if item.pinned is None:
            on_device = torch.from_numpy(np.ascontiguousarray(item.array)).to(self.device)
            return on_device, on_device
        on_device = item.pinned.tensor.to(self.device, non_blocking=True)
        uploaded = torch.cuda.Event(blocking=True)  # the decoder sleeps on it, rather than spin
        uploaded.record()
        item.pinned.release(busy_until=uploaded)
        return on_device, on_device

    @torch.inference_mode()
    def _hand_over(self, index: int, frame: torch.Tensor, ids: torch.Tensor) -> None:
        name = self.outputs.mask_name(index) if self.mask_jobs is not None else None
        blended = self.blend(frame, ids) if self.blend is not None else None
        if self.cuda:
            mask_buffer = self._start_download(ids, "mask") if name is not None else None
            overlay_buffer = self._start_download(blended, "overlay") if blended is not None else None
            # After both copies: the writers wait for it (asleep, not spinning), nothing here does.
            ready = torch.cuda.Event(blocking=True)
            ready.record()
            mask_copy = HostCopy(mask_buffer.array, ready, mask_buffer) if mask_buffer is not None else None
            overlay_copy = (
                HostCopy(overlay_buffer.array, ready, overlay_buffer) if overlay_buffer is not None else None
            )
        else:
            mask_copy = HostCopy(ids.numpy()) if name is not None else None
            overlay_copy = HostCopy(blended.numpy()) if blended is not None else None
        if name is None:
            self.completion.finished(index, MASK)  # no file wanted for this frame
        else:
            assert self.mask_jobs is not None and mask_copy is not None
            self.mask_jobs.put(MaskJob(index, name, mask_copy))
        if overlay_copy is not None:
            assert self.overlay_jobs is not None
            self.overlay_jobs.put(OverlayJob(index, overlay_copy))

    def _start_download(self, result: torch.Tensor, kind: str) -> HostBuffer:
        """Start copying ``result`` into a pinned buffer; the caller records the event after it."""
        buffer = self._pool(kind, tuple(result.shape)).acquire()
        buffer.tensor.copy_(result, non_blocking=True)
        return buffer

    def _pool(self, kind: str, shape: tuple[int, ...]) -> HostBufferPool:
        current = self._mask_pool if kind == "mask" else self._overlay_pool
        if current is not None:
            if current.shape != shape:
                raise HodorError(f"frame results changed size mid-video ({current.shape} -> {shape})")
            return current
        count = self._buffer_counts[0 if kind == "mask" else 1]
        pool = HostBufferPool(max(1, count), shape, self.stop)
        if kind == "mask":
            self._mask_pool = pool
        else:
            self._overlay_pool = pool
        return pool
