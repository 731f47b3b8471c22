"""The pipeline's entry point: the stages on their threads, bounded channels between them; the
calling thread runs the device stage and receives Ctrl-C.

::

    decoder ──frames──▶ device stage ──masks──▶ mask writers (a pool)
                        (this thread) ╰─overlay─▶ overlay encoder (one, in frame order)

Every channel and buffer pool is bounded, so the frames in flight (decoded, not yet written)
never exceed :attr:`PipelineLayout.frames_bound`, however long the video: a slow writer holds
the device stage back, which holds the decoder back.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from hodor.engine.io.overlay import overlay_encoder_threads
from hodor.engine.io.staging import Incomplete
from hodor.engine.loop.session import VideoSession
from hodor.engine.pipeline.completion import Completion, Latency
from hodor.engine.pipeline.control import Aborted, Channel, Stop
from hodor.engine.pipeline.decode import DecodedFrame, Decoder, pinned_buffer_count
from hodor.engine.pipeline.device import DeviceStage
from hodor.engine.pipeline.outputs import MASK, Outputs
from hodor.engine.pipeline.writers import MaskJob, OverlayEncoder, OverlayJob, write_masks

MAX_MASK_WRITERS = 4
OVERLAY_QUEUE = 4
DECODER_GRACE_S = 2.0
"""How long a stopped run waits for the decoder to notice; a live source blocked in a read may
never return, and its thread is left behind (it exits at its next frame)."""
_POLL_S = 0.1


class PipelineInterrupted(KeyboardInterrupt):
    """Ctrl-C (or an interrupt in a stage) stopped the run; ``masks_written`` frames from the first
    had their mask written by then."""

    def __init__(self, masks_written: int) -> None:
        super().__init__(f"interrupted after {masks_written} frames")
        self.masks_written = masks_written


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline is laid out; None picks the default.

    ``mask_writers``: threads writing mask files (default: the torch threads, at most 4).
    ``frame_queue``: decoded frames waiting for the device (default: the session's chunk, at least 4).
    ``live``: process frame by frame and end normally on Ctrl-C (default: what the source says,
    its ``live`` attribute).
    """

    mask_writers: int | None = None
    frame_queue: int | None = None
    live: bool | None = None


@dataclass(frozen=True)
class PipelineLayout:
    """Thread and channel sizes of one run."""

    mask_writers: int
    frame_queue: int
    mask_queue: int
    overlay_queue: int
    chunk: int

    @classmethod
    def choose(cls, options: PipelineOptions, chunk: int) -> PipelineLayout:
        writers = options.mask_writers or max(1, min(MAX_MASK_WRITERS, torch.get_num_threads()))
        frame_queue = options.frame_queue or max(4, chunk)
        return cls(
            mask_writers=writers,
            frame_queue=frame_queue,
            mask_queue=2 * writers,
            overlay_queue=OVERLAY_QUEUE,
            chunk=chunk,
        )

    @property
    def frames_bound(self) -> int:
        """Most frames decoded and not yet written at any time: one in the decoder's hands, the
        frame channel, a chunk in the session, and those queued at or held by the writers."""
        return (
            1
            + self.frame_queue
            + self.chunk
            + (self.mask_queue + self.mask_writers)
            + (self.overlay_queue + 1)
        )


@dataclass(frozen=True)
class PipelineResult:
    """What a run did. Times are ``time.perf_counter()`` values.

    ``frames``: frames from the first on whose every output was written. ``shortfall``: how the
    input fell short of its declared frames (None if it did not). ``interrupted``: a live
    source ended by Ctrl-C (its outputs are whole; ``frames`` of them).
    """

    frames: int
    shortfall: Incomplete | None
    started_at: float
    first_frame_at: float | None
    finished_at: float
    latency: Latency | None
    peak_frames_in_flight: int
    layout: PipelineLayout
    interrupted: bool = False

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def run_pipeline(
    session: VideoSession,
    frames: Iterable[np.ndarray],
    references: Mapping[int, np.ndarray],
    outputs: Outputs,
    options: PipelineOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PipelineResult:
    """Segment ``frames`` with ``session`` from ``references`` and write ``outputs``, overlapped.

    ``frames``: ``[H,W,3]`` uint8 RGB arrays, or a source such as
    :func:`hodor.engine.io.open_frames` / :func:`hodor.engine.io.open_stream` gives (read on a
    thread of its own). ``references``: frame index -> ``[H,W]`` object ids. The masks are those
    of ``session.run(frames, references)``; every file is written whole, in any order, each frame
    once; the overlay in frame order. ``on_progress(n)``: n more frames finished, in order.

    An error in any stage stops every stage and is raised here (the first one); files written
    until then stay whole (write into a :class:`hodor.engine.io.StagedDir` to keep none).
    Ctrl-C raises :class:`PipelineInterrupted`, except for a live source, where it ends the run
    normally once what had reached the writers is written (a second Ctrl-C interrupts that).
    """
    options = options or PipelineOptions()
    live = options.live if options.live is not None else bool(getattr(frames, "live", False))
    layout = PipelineLayout.choose(options, 1 if live else session.chunk)
    stop = Stop()
    completion = Completion(outputs.parts, on_progress)
    cuda = session.device.type == "cuda"

    frame_channel: Channel[DecodedFrame] = Channel(layout.frame_queue, stop, "frames", intake=True)
    mask_channel: Channel[MaskJob] | None = None
    overlay_channel: Channel[OverlayJob] | None = None
    if outputs.masks_dir is not None:
        mask_channel = Channel(layout.mask_queue, stop, "masks")
    if outputs.overlay is not None:
        overlay_channel = Channel(layout.overlay_queue, stop, "overlay")

    decoder = Decoder(
        frames, frame_channel, completion, stop, pinned_buffer_count(session.device, layout.frame_queue)
    )
    device_stage = DeviceStage(
        session,
        references,
        outputs,
        completion,
        stop,
        mask_channel,
        overlay_channel,
        live=live,
        mask_buffers=layout.mask_queue + layout.mask_writers + 1 if cuda else 0,
        overlay_buffers=layout.overlay_queue + 2 if cuda else 0,
    )
    writers: list[threading.Thread] = []
    if mask_channel is not None:
        writers += [
            _thread(f"hodor-masks-{k}", write_masks, stop, mask_channel, outputs, completion)
            for k in range(layout.mask_writers)
        ]
    if overlay_channel is not None:
        writers.append(
            _thread(
                "hodor-overlay",
                OverlayEncoder(outputs, completion, threads=overlay_encoder_threads(session.device)).run,
                stop,
                overlay_channel,
            )
        )
    decoder_thread = _thread("hodor-decoder", decoder.run, stop)

    started_at = time.perf_counter()
    started: list[threading.Thread] = []
    with _CtrlC(stop, live) as ctrl_c:
        try:
            for thread in (decoder_thread, *writers):
                thread.start()
                started.append(thread)
            # The device stage runs here, in the calling thread: on the CPU, torch's thread pool
            # then works exactly as it does for a plain VideoSession.run in the same thread.
            device_stage.run(frame_channel)
        except Aborted:
            pass
        except KeyboardInterrupt as exc:  # only where another SIGINT handler than ours raised it
            ctrl_c.interrupt(exc)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other stages stopped
            stop.abort(exc)
        if not stop.aborted:
            for channel in (mask_channel, overlay_channel):
                if channel is not None:
                    channel.close()  # already closed, unless an interrupt ended the device stage
        _join_all([t for t in started if t is not decoder_thread], ctrl_c)
        if decoder_thread in started:
            decoder_thread.join(None if not stop.intake_closed else DECODER_GRACE_S)
    finished_at = time.perf_counter()

    if (error := stop.error) is not None:
        if isinstance(error, KeyboardInterrupt):
            raise PipelineInterrupted(completion.part_in_order(MASK)) from None
        raise error
    return PipelineResult(
        frames=completion.in_order,
        shortfall=decoder.shortfall,
        started_at=started_at,
        first_frame_at=completion.first_finished_at,
        finished_at=finished_at,
        latency=completion.latency(),
        peak_frames_in_flight=completion.peak_in_flight,
        layout=layout,
        interrupted=ctrl_c.interrupted,
    )


def _thread(name: str, target: Callable[..., None], stop: Stop, *args: object) -> threading.Thread:
    """A daemon thread running ``target(*args)``; whatever it raises aborts the run."""

    def body() -> None:
        try:
            target(*args)
        except Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which re-raises it
            stop.abort(exc)

    return threading.Thread(target=body, name=name, daemon=True)


class _CtrlC:
    """What Ctrl-C does during a run: the first one closes a live run's intake (what reached the
    writers is still written), any other aborts the run.

    In the main thread, Python's default SIGINT handler is replaced for the run's duration by one
    that only sets the stop state, so that the interrupt never lands in the middle of the device
    stage's bookkeeping: every stage leaves at its next step. Elsewhere (or under a handler of
    the application's own) a ``KeyboardInterrupt`` that reaches the pipeline is handed to
    :meth:`interrupt` the same way.
    """

    def __init__(self, stop: Stop, live: bool) -> None:
        self.stop = stop
        self.live = live
        self.interrupted = False
        self._previous: object = None

    def interrupt(self, exc: BaseException | None = None) -> None:
        if self.live and not self.interrupted and not self.stop.aborted:
            self.interrupted = True
            self.stop.close_intake()
        else:
            self.stop.abort(exc if exc is not None else KeyboardInterrupt())

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._previous = signal.signal(signal.SIGINT, lambda signum, frame: self.interrupt())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _join_all(workers: list[threading.Thread], ctrl_c: _CtrlC) -> None:
    """Wait for ``workers`` to end (the stages leave at their next step once the run is aborted)."""
    for worker in workers:
        while worker.is_alive():
            try:
                worker.join(_POLL_S)
            except KeyboardInterrupt as exc:
                ctrl_c.interrupt(exc)
