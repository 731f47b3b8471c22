"""The overlapped pipeline (``hodor.engine.pipeline``): the masks of ``VideoSession.run``, written
whole and in order whatever order the writers finish in, memory bounded by its channels, every
stage stopped by an error in any one of them, and the overlay blend on the device equal to the
host's bit for bit."""

from __future__ import annotations

import random
import threading
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from hodor.engine.io import default_palette, write_mask
from hodor.engine.io.overlay import blend_overlay
from hodor.engine.loop.session import VideoSession
from hodor.engine.pipeline import Outputs, PipelineInterrupted, PipelineOptions, run_pipeline
from hodor.engine.pipeline.blend import DeviceBlender
from hodor.engine.pipeline.completion import Completion
from hodor.engine.pipeline.control import END, Aborted, Channel, Stop
from hodor.engine.pipeline.kernel_cache import TRITON_CACHE_ENV, use_persistent_kernel_cache
from hodor.engine.pipeline.startup import StartupClock, process_started_at
from hodor.errors import HodorError
from tests.engine_fake_backend import FakeBackend
from tests.test_engine_host_sync import MASKS, WINDOW, clip

NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"
PALETTE = default_palette()


def session(chunk: int = 4, backend=None) -> VideoSession:
    return VideoSession(backend or FakeBackend(), temporal_window=WINDOW, chunk=chunk)


def outputs(root: Path, overlay: bool = True, **kwargs) -> Outputs:
    (root / "masks").mkdir(parents=True, exist_ok=True)
    return Outputs(
        palette=PALETTE,
        masks_dir=root / "masks",
        overlay=root / "overlay.mp4" if overlay else None,
        fps=Fraction(10),
        **kwargs,
    )


def read_masks(root: Path, count: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(root / "masks" / f"{t:05d}.png")) for t in range(count)]


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("hodor-") and t.is_alive()]


# --------------------------------------------------------------------------- results and order


def test_the_masks_are_those_of_session_run_and_the_overlay_is_in_frame_order(tmp_path):
    frames = clip(14)
    expected = list(session().run(frames, MASKS))
    progress: list[int] = []
    order: list[int] = []
    lock = threading.Lock()

    written = [threading.Event() for _ in range(14)]

    def write_out_of_order(path: Path, ids: np.ndarray, palette: list[int]) -> None:
        t = int(path.stem)
        if t % 3 == 0 and t + 1 < 14:
            written[t + 1].wait(timeout=10)  # every third frame finishes after the next one
        write_mask(path, ids, palette)
        with lock:
            order.append(t)
        written[t].set()

    result = run_pipeline(
        session(),
        frames,
        MASKS,
        outputs(tmp_path, write_mask=write_out_of_order),
        PipelineOptions(mask_writers=3),
        on_progress=progress.append,
    )
    assert result.frames == 14 and result.shortfall is None and not result.interrupted
    assert order != sorted(order), "the writers should have finished out of order"
    assert sorted(order) == list(range(14))
    for t, (got, want) in enumerate(zip(read_masks(tmp_path, 14), expected, strict=True)):
        assert np.array_equal(got, want), f"frame {t}"
    assert sum(progress) == 14
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"{t:05d}.png" for t in range(14)]

    with av.open(str(tmp_path / "overlay.mp4")) as container:
        video = [f.to_ndarray(format="rgb24").astype(np.int16) for f in container.decode(video=0)]
    assert len(video) == 14
    blended = [blend_overlay(f, m, PALETTE).astype(np.int16) for f, m in zip(frames, expected, strict=True)]
    for t, image in enumerate(video):
        errors = [np.abs(image[: f.shape[0], : f.shape[1]] - f).mean() for f in blended]
        assert int(np.argmin(errors)) == t and errors[t] < 4, f"overlay frame {t}"
    assert pipeline_threads() == []


def test_live_mode_steps_frame_by_frame_with_the_same_masks(tmp_path):
    frames = clip(9)
    stepped = session()
    expected = [stepped.step(f, MASKS.get(t)) for t, f in enumerate(frames)]
    result = run_pipeline(
        session(chunk=4), frames, MASKS, outputs(tmp_path, overlay=False), PipelineOptions(live=True)
    )
    assert result.frames == 9 and result.latency is not None and result.latency.frames == 9
    for t, (got, want) in enumerate(zip(read_masks(tmp_path, 9), expected, strict=True)):
        assert np.array_equal(got, want), f"frame {t}"


def test_frames_whose_mask_is_not_wanted_get_no_file(tmp_path):
    wanted = {0, 5, 10}
    result = run_pipeline(
        session(),
        clip(12),
        MASKS,
        outputs(tmp_path, overlay=False, mask_name=lambda t: f"{t:05d}" if t in wanted else None),
    )
    assert result.frames == 12
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["00000.png", "00005.png", "00010.png"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_device_blend_is_the_host_blend_bit_for_bit(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    rng = np.random.default_rng(0)
    palette = [int(v) for v in rng.integers(0, 256, 768)]
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ids = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    ids[rng.random((37, 53)) < 0.3] = 0
    blend = DeviceBlender(palette, torch.device(device))
    got = blend(torch.from_numpy(frame).to(device), torch.from_numpy(ids).to(device)).cpu().numpy()
    assert got.dtype == np.uint8 and np.array_equal(got, blend_overlay(frame, ids, palette))


# --------------------------------------------------------------------------- bounded memory


def test_a_slow_writer_holds_the_decoder_back(tmp_path):
    frames = clip(4) * 10  # 40 frames
    read: list[int] = []
    read_when_first_written: list[int] = []

    def source():
        for frame in frames:
            read.append(1)
            yield frame

    def slow_write(path: Path, ids: np.ndarray, palette: list[int]) -> None:
        time.sleep(0.03)
        if not read_when_first_written:
            read_when_first_written.append(len(read))
        write_mask(path, ids, palette)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_pipeline(
            session(chunk=2),
            source(),
            {0: MASKS[0]},
            outputs(tmp_path, write_mask=slow_write),
            PipelineOptions(mask_writers=1, frame_queue=2),
        )
    bound = result.layout.frames_bound
    assert result.frames == 40 and bound < 40
    assert result.peak_frames_in_flight <= bound
    assert read_when_first_written[0] <= bound


def test_channels_and_completion_keep_their_bounds_and_order():
    stop = Stop()
    channel: Channel[int] = Channel(3, stop)
    got: list[int] = []

    def reader():
        while (item := channel.get()) is not END:
            time.sleep(0.002)
            got.append(item)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(30):
        channel.put(i)
    channel.close()
    thread.join(5)
    assert got == list(range(30)) and channel.high_water <= 3

    done = Completion(("mask", "overlay"))
    for t in range(4):
        done.decoded(t)
    for t, part in [(1, "mask"), (1, "overlay"), (0, "mask")]:
        done.finished(t, part)
    assert done.in_order == 0 and done.part_in_order("mask") == 2
    done.finished(0, "overlay")
    assert done.in_order == 2 and done.peak_in_flight == 4


def test_an_aborted_channel_releases_its_waiters():
    stop = Stop()
    full: Channel[int] = Channel(1, stop)
    full.put(0)
    empty: Channel[int] = Channel(1, stop)
    raised: list[str] = []

    def wait(action, name):
        try:
            action()
        except Aborted:
            raised.append(name)

    threads = [
        threading.Thread(target=wait, args=(lambda: full.put(1), "put")),
        threading.Thread(target=wait, args=(empty.get, "get")),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    stop.abort(RuntimeError("stop"))
    for thread in threads:
        thread.join(5)
    assert sorted(raised) == ["get", "put"] and isinstance(stop.error, RuntimeError)


# --------------------------------------------------------------------------- errors and interrupts


class FailingBackend(FakeBackend):
    """The stand-in network, failing at its ``fail_at``-th decode call."""

    def __init__(self, fail_at: int, error: BaseException) -> None:
        super().__init__()
        self.fail_at, self.error, self.decodes = fail_at, error, 0

    def decode(self, *args):
        self.decodes += 1
        if self.decodes == self.fail_at:
            raise self.error
        return super().decode(*args)


@pytest.mark.parametrize("stage", ["decoder", "model", "mask writer", "overlay"])
def test_an_error_in_any_stage_stops_every_stage_and_is_raised(tmp_path, stage, monkeypatch):
    frames = clip(4) * 20  # 80 frames: far more than the pipeline holds
    read = 0

    def source():
        nonlocal read
        for t, frame in enumerate(frames):
            if stage == "decoder" and t == 10:
                raise HodorError("frame 10 is damaged")
            read += 1
            yield frame

    def write(path: Path, ids: np.ndarray, palette: list[int]) -> None:
        if stage == "mask writer" and path.stem == "00006":
            raise HodorError(f"cannot write {path}: disk full")
        write_mask(path, ids, palette)

    if stage == "overlay":
        from hodor.engine.io import overlay as overlay_module

        original = overlay_module.OverlayWriter.write_image
        calls = []

        def failing_write_image(self, image):
            calls.append(1)
            if len(calls) == 5:
                raise OSError(28, "No space left on device")
            original(self, image)

        monkeypatch.setattr(overlay_module.OverlayWriter, "write_image", failing_write_image)
    backend = FailingBackend(8, HodorError("the model gave up")) if stage == "model" else FakeBackend()
    start = time.perf_counter()
    with pytest.raises(HodorError) as raised:
        run_pipeline(session(chunk=2, backend=backend), source(), MASKS, outputs(tmp_path, write_mask=write))
    message = {
        "decoder": "frame 10 is damaged",
        "model": "the model gave up",
        "mask writer": "disk full",
        "overlay": "No space left on device",
    }[stage]
    assert message in str(raised.value)
    assert time.perf_counter() - start < 20
    assert read < 40, "the decoder went on reading after the error"
    assert pipeline_threads() == []
    # Whatever was written is whole: no temporary file, every mask readable, no unfinished overlay.
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    for path in (tmp_path / "masks").iterdir():
        Image.open(path).load()
    assert not (tmp_path / "overlay.mp4").exists()


def test_a_bug_in_a_stage_is_raised_with_its_own_type_and_traceback(tmp_path):
    backend = FailingBackend(3, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError, match="a bug") as raised:
        run_pipeline(session(backend=backend), clip(10), MASKS, outputs(tmp_path))
    assert any(entry.name == "decode" for entry in raised.traceback)


def test_an_interrupt_in_a_stage_reports_the_masks_written_in_order(tmp_path):
    def write(path: Path, ids: np.ndarray, palette: list[int]) -> None:
        if path.stem == "00004":
            raise KeyboardInterrupt
        write_mask(path, ids, palette)

    with pytest.raises(PipelineInterrupted) as raised:
        run_pipeline(
            session(), clip(12), MASKS, outputs(tmp_path, write_mask=write), PipelineOptions(mask_writers=1)
        )
    assert raised.value.masks_written == 4
    assert pipeline_threads() == []


class SlowBackend(FakeBackend):
    def decode(self, *args):
        time.sleep(0.01)
        return super().decode(*args)


def test_ctrl_c_in_the_calling_thread_aborts_a_file_and_ends_a_live_source_whole(tmp_path):
    """Ctrl-C reaches the thread that called ``run_pipeline``: a file run is aborted; a live run
    stops taking frames and writes what reached the writers, the overlay included."""
    import _thread
    import signal

    # interrupt_main() does nothing where SIGINT is ignored (a test run started in the background).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def endless():
        t = 0
        while True:
            yield clip(4)[t % 4]
            t += 1

    try:
        threading.Timer(1.0, _thread.interrupt_main).start()
        with pytest.raises(PipelineInterrupted):
            run_pipeline(session(backend=SlowBackend()), endless(), MASKS, outputs(tmp_path / "file"))
        assert pipeline_threads() == []

        threading.Timer(1.0, _thread.interrupt_main).start()
        result = run_pipeline(
            session(backend=SlowBackend()),
            endless(),
            MASKS,
            outputs(tmp_path / "live"),
            PipelineOptions(live=True),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.interrupted and result.frames > 0
    names = sorted(p.name for p in (tmp_path / "live" / "masks").iterdir())
    assert names == [f"{t:05d}.png" for t in range(result.frames)]
    with av.open(str(tmp_path / "live" / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == result.frames
    assert pipeline_threads() == []


# --------------------------------------------------------------------------- start-up and caches


def test_start_up_is_counted_from_the_process_start():
    started = process_started_at()
    assert started is not None and 0 < time.perf_counter() - started < 3600
    clock = StartupClock()
    time.sleep(0.01)
    assert clock.mark("inputs") > 0 and clock.phases[0][0] == "inputs"
    assert clock.since_origin(time.perf_counter()) >= clock.phases[0][1]


def test_triton_kernels_are_cached_under_the_user_cache(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    path = use_persistent_kernel_cache(environ)
    assert path == tmp_path / "cache" / "hodor-engine" / "triton" and path.is_dir()
    assert environ[TRITON_CACHE_ENV] == str(path)
    chosen = {TRITON_CACHE_ENV: str(tmp_path / "mine")}
    assert use_persistent_kernel_cache(chosen) == tmp_path / "mine"
    assert chosen == {TRITON_CACHE_ENV: str(tmp_path / "mine")}


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_the_pipeline_makes_the_device_stage_wait_for_nothing_on_cuda(tmp_path):
    """Past the warm-up, the device stage runs with ``set_sync_debug_mode("error")``: any call of its
    that makes the host wait for the device raises (and fails the run). The writers' waits on their
    frames' events are the only synchronisation, and they do not count as the device stage's."""
    from tests.test_engine_host_sync import WARM_UP, DeviceStandIn

    class SwitchOn(DeviceStandIn):
        decodes = 0

        def decode(self, *args):
            self.decodes += 1
            if self.decodes == WARM_UP:  # from here on, the steady state
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            return super().decode(*args)

    frames = clip(WARM_UP + 12)
    expected = list(session(backend=DeviceStandIn(device=torch.device("cuda"))).run(frames, MASKS))
    try:
        result = run_pipeline(
            session(backend=SwitchOn(device=torch.device("cuda"))), frames, MASKS, outputs(tmp_path)
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.frames == len(frames)
    for t, (got, want) in enumerate(zip(read_masks(tmp_path, len(frames)), expected, strict=True)):
        assert np.array_equal(got, want), f"frame {t}"


def test_random_sleeps_in_every_stage_keep_the_output_exact(tmp_path):
    """Stages racing at random speeds: the files and their order do not change."""
    rng = random.Random(1)
    frames = clip(16)
    expected = list(session().run(frames, MASKS))

    def jittery_source():
        for frame in frames:
            time.sleep(rng.random() * 0.004)
            yield frame

    def jittery_write(path: Path, ids: np.ndarray, palette: list[int]) -> None:
        time.sleep(rng.random() * 0.01)
        write_mask(path, ids, palette)

    result = run_pipeline(
        session(),
        jittery_source(),
        MASKS,
        outputs(tmp_path, write_mask=jittery_write),
        PipelineOptions(mask_writers=4),
    )
    assert result.frames == 16
    for t, (got, want) in enumerate(zip(read_masks(tmp_path, 16), expected, strict=True)):
        assert np.array_equal(got, want), f"frame {t}"


def test_the_overlay_encoder_takes_one_thread_beside_the_network_on_the_cpu():
    from hodor.engine.io.overlay import overlay_encoder_threads

    assert overlay_encoder_threads(torch.device("cpu")) == 1
    assert overlay_encoder_threads(torch.device("cuda")) == 0  # FFmpeg's choice: the cores are free there
