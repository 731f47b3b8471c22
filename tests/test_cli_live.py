"""``hodor-run`` through its pipeline, as a user runs it: Ctrl-C on a file (nothing written), a live
stream on standard input stopped by Ctrl-C or by its end (everything written whole), errors in
the middle of a video (one line, nothing written), and the live sources' own rules."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from hodor.engine import cli
from hodor.engine.io import open_stream
from hodor.engine.io.streams import StreamReader, is_stream, stream_stem
from hodor.engine.loop.session import VideoSession
from hodor.errors import HodorError
from tests.engine_fake_backend import FakeBackend, small_config
from tests.test_cli_run import H, W, assert_user_error, frame, frames_dir, mask_png, run_cli, without_progress

REPO = Path(__file__).resolve().parent.parent
FAKE_CLI = REPO / "tests" / "fake_model_cli.py"
STREAM_FPS = 25


def start_cli(
    tmp_path: Path, *args: object, delay: float = 0.0, stdin=subprocess.DEVNULL
) -> subprocess.Popen:
    (tmp_path / "fake.pth").write_bytes(b"x")
    env = dict(os.environ, PYTHONPATH=str(REPO), HODOR_TEST_FRAME_DELAY=str(delay))
    return subprocess.Popen(
        [sys.executable, str(FAKE_CLI), *map(str, args), "--model", str(tmp_path / "fake.pth")],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )


def staged_masks(tmp_path: Path) -> int:
    return sum(1 for _ in tmp_path.glob(".out.staging-*/masks/*.png"))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def hidden_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


class StreamProducer:
    """An H.264 MPEG-TS stream of moving-box frames, muxed frame by frame so that its bytes can be
    sent at a fixed frame rate; ``sent`` keeps every byte sent, to decode it again afterwards."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, "w", format="mpegts", options={"flush_packets": "1"})
        self._stream = self._container.add_stream("libx264", rate=STREAM_FPS)
        self._stream.height, self._stream.width, self._stream.pix_fmt = H, W, "yuv420p"
        self._stream.options = {"tune": "zerolatency", "preset": "ultrafast"}
        self._position = 0
        self.frames = 0

    def next_bytes(self) -> bytes:
        image = frame(self.frames % 20)
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1
        data = self._buffer.getvalue()
        chunk, self._position = data[self._position :], len(data)
        return chunk

    def finish(self) -> bytes:
        """The end of the stream: whatever the encoder and the muxer still hold."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        data = self._buffer.getvalue()
        chunk, self._position = data[self._position :], len(data)
        return chunk

    @property
    def sent(self) -> bytes:
        return self._buffer.getvalue()[: self._position]


def send_stream(proc: subprocess.Popen, producer: StreamProducer, until, max_frames: int = 1500) -> None:
    """Write the stream into ``proc``'s standard input at :data:`STREAM_FPS` until ``until()``."""
    assert proc.stdin is not None
    for _ in range(max_frames):
        if until() or proc.poll() is not None:
            return
        proc.stdin.write(producer.next_bytes())
        proc.stdin.flush()
        time.sleep(1 / STREAM_FPS)
    raise AssertionError("the stream was never stopped")


def decoded_frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), format="mpegts") as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def live_masks_expected(frames: list[np.ndarray], reference: np.ndarray) -> list[np.ndarray]:
    session = VideoSession(FakeBackend(config=small_config(min_dim=48, max_dim=96)))
    return [session.step(f, reference if t == 0 else None) for t, f in enumerate(frames)]


# --------------------------------------------------------------------------- live sources


def test_a_live_stream_on_standard_input_stopped_by_ctrl_c_is_written_whole(tmp_path):
    first = mask_png(tmp_path / "00000.png", {1: (10, 26, 4, 20)})
    proc = start_cli(tmp_path, "-", "--masks", first, "--out", tmp_path / "out", stdin=subprocess.PIPE)
    producer = StreamProducer()
    try:
        send_stream(proc, producer, until=lambda: staged_masks(tmp_path) >= 8)
        assert proc.poll() is None, proc.communicate()[1].decode()
        proc.send_signal(signal.SIGINT)  # the stream stays open: the decoder may be waiting for data
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.stdin.close()
    assert proc.returncode == 0, stderr.decode()
    summary = stdout.decode().strip().splitlines()[-1]
    assert "(live source stopped by Ctrl-C)" in summary and "latency median" in summary, summary
    assert "start-up" in summary and "p95" in summary
    count = int(summary.split(" frames")[0])
    assert count >= 8

    out = tmp_path / "out"
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names == [f"{t:05d}.png" for t in range(count)]
    expected = live_masks_expected(decoded_frames(producer.sent)[:count], np.asarray(Image.open(first)))
    for t, want in enumerate(expected):
        assert np.array_equal(np.asarray(Image.open(out / "masks" / names[t])), want), f"frame {t}"
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == count
    assert not (out / "INCOMPLETE.json").exists()
    assert hidden_entries(tmp_path) == []


def test_a_live_stream_that_ends_is_written_to_its_last_frame(tmp_path):
    first = mask_png(tmp_path / "00000.png", {1: (10, 26, 4, 20)})
    later = mask_png(tmp_path / "00006.png", {2: (30, 40, 40, 60)})  # object 2 joins at frame 6
    proc = start_cli(tmp_path, "-", "--masks", first, later, "--no-overlay", stdin=subprocess.PIPE)
    producer = StreamProducer()
    send_stream(proc, producer, until=lambda: producer.frames == 15)
    proc.stdin.write(producer.finish())
    stdout, stderr = proc.communicate(timeout=120)  # closes standard input: the stream's end
    assert proc.returncode == 0, stderr.decode()
    out = tmp_path / "stdin.hodor-out"
    decoded = decoded_frames(producer.sent)
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names == [f"{t:05d}.png" for t in range(len(decoded))] and len(decoded) >= 14
    masks = [np.asarray(Image.open(out / "masks" / n)) for n in names]
    assert 2 not in masks[5] and (masks[6] == 2).sum() == 200
    assert "stopped by Ctrl-C" not in stdout.decode()


def test_live_source_names_and_bindings(tmp_path, monkeypatch):
    assert is_stream("-") and is_stream("rtsp://cam.local/live/main") and is_stream("https://x.org/a.mp4")
    assert not is_stream(str(tmp_path)) and not is_stream("clip.mp4")
    assert is_stream("/dev/null")  # a character device (a V4L2 camera is one)
    assert stream_stem("-") == "stdin" and stream_stem("rtsp://cam.local/live/main") == "main"
    assert stream_stem("udp://239.0.0.1:1234") == "239.0.0.1"
    assert cli.default_output_dir("-") == Path.cwd() / "stdin.hodor-out"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(HodorError, match="standard input is a terminal"):
        open_stream("-")


def test_a_stream_that_breaks_off_says_how_many_frames_it_gave(tmp_path):
    data = b"".join(StreamProducer().next_bytes() for _ in range(6))
    path = tmp_path / "s.ts"
    path.write_bytes(data)
    source = open_stream(f"file://{path}")
    reader = source.read()

    def frames():
        yield from decoded_frames(data)[1:3]
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    source._frames = frames()
    assert isinstance(reader, StreamReader) and len(list(reader)) == 3
    short = reader.shortfall()
    assert (short.frames_written, short.frames_expected) == (3, None)
    assert "broke off after frame 3" in short.reason and short.count() == "3 frames"
    reader.close()


# --------------------------------------------------------------------------- files: Ctrl-C and errors


def test_ctrl_c_on_a_file_writes_nothing(tmp_path):
    clip = frames_dir(tmp_path / "clip", 40)
    mask = mask_png(tmp_path / "f000.png", {1: (10, 26, 4, 20)})
    proc = start_cli(tmp_path, clip, "--masks", mask, "--out", tmp_path / "out", "--chunk", "2", delay=0.1)
    try:
        wait_for(lambda: staged_masks(tmp_path) >= 3 or proc.poll() is not None, 120, "the first masks")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    last = stderr.decode().strip().splitlines()[-1]
    assert proc.returncode == 130, stderr.decode()
    assert last.startswith("hodor-run: interrupted after ") and last.endswith(
        f" of 40 frames; nothing was written to {tmp_path / 'out'}"
    ), last
    assert not (tmp_path / "out").exists() and hidden_entries(tmp_path) == []


def test_a_writer_failing_mid_video_is_one_line_and_leaves_nothing(
    tmp_path, clip_dir, fake_model, capsys, monkeypatch
):
    from hodor.engine.io import write_mask

    def disk_full_at_frame_3(path, ids, palette):
        if path.stem == "f003":
            raise HodorError(f"cannot write {path}: No space left on device")
        write_mask(path, ids, palette)

    monkeypatch.setattr(cli, "write_mask", disk_full_at_frame_3)
    out = tmp_path / "out"
    code, _, err = run_cli(
        [clip_dir, "--masks", tmp_path / "m.png", "--model", tmp_path / "fake.pth", "--out", out], capsys
    )
    assert_user_error(code, without_progress(err), "f003.png", "No space left on device")
    assert not out.exists() and hidden_entries(tmp_path) == []


def test_the_model_failing_mid_video_is_one_line_and_leaves_nothing(
    tmp_path, clip_dir, fake_model, capsys, monkeypatch
):
    class Limited(FakeBackend):
        def check_limits(self, num_objects, history, height, width, streams=1):
            if num_objects > 1:
                raise HodorError(f"this export runs at most 1 object, not {num_objects}")

    monkeypatch.setattr(
        cli, "open_backend", lambda *args, **kwargs: Limited(config=small_config(min_dim=48, max_dim=96))
    )
    later = mask_png(tmp_path / "later.png", {2: (30, 40, 40, 60)})
    out = tmp_path / "out"
    code, _, err = run_cli(
        [
            clip_dir,
            "--masks",
            tmp_path / "m.png",
            f"{later}@3",
            "--model",
            tmp_path / "fake.pth",
            "--out",
            out,
        ],
        capsys,
    )
    assert_user_error(code, without_progress(err), "at most 1 object")
    assert not out.exists() and hidden_entries(tmp_path) == []


@pytest.fixture
def clip_dir(tmp_path) -> Path:
    d = frames_dir(tmp_path / "clip", 8)
    mask_png(tmp_path / "m.png", {1: (10, 26, 4, 20)})
    return d


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    monkeypatch.setattr(
        cli, "open_backend", lambda *args, **kwargs: FakeBackend(config=small_config(min_dim=48, max_dim=96))
    )
    (tmp_path / "fake.pth").write_bytes(b"x")
