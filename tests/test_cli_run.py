"""``hodor-run``: outputs, defaults, model discovery, and one test per bad input (exit 2, one line)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hodor.engine import cli
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.io import default_palette, write_mask
from tests.engine_fake_backend import FakeBackend, small_config

H, W = 48, 64
PALETTE = [(i * 37) % 256 for i in range(768)]


def frame(t: int) -> np.ndarray:
    f = np.full((H, W, 3), 50, np.uint8)
    f[10:26, 4 + 2 * t : 20 + 2 * t] = (240, 40, 40)
    return f


def mask_png(path: Path, boxes: dict[int, tuple[int, int, int, int]], size=(H, W)) -> Path:
    ids = np.zeros(size, np.uint8)
    for i, (y0, y1, x0, x1) in boxes.items():
        ids[y0:y1, x0:x1] = i
    img = Image.fromarray(ids, mode="P")
    img.putpalette(PALETTE)
    img.save(path)
    return path


@pytest.fixture
def clip_dir(tmp_path) -> Path:
    d = tmp_path / "clip"
    d.mkdir()
    for t in range(6):
        Image.fromarray(frame(t)).save(d / f"f{t:03d}.png")
    return d


@pytest.fixture
def mask0(tmp_path) -> Path:
    return mask_png(tmp_path / "f000.png", {1: (10, 26, 4, 20)})


@pytest.fixture
def fake_model(tmp_path, monkeypatch) -> list:
    """A model path that exists, opened as the fake backend; records the overrides it was given."""
    seen: list = []

    def open_fake(model_path, backend, device, overrides: ConfigOverrides, torch_options=None):
        seen.append((Path(model_path), backend, device, overrides))
        return FakeBackend(config=overrides.apply(small_config(min_dim=48, max_dim=96)))

    monkeypatch.setattr(cli, "open_backend", open_fake)
    (tmp_path / "fake.pth").write_bytes(b"x")
    return seen


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("hodor-run: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


# --------------------------------------------------------------------------- successful runs


def test_frame_directory_run_writes_masks_overlay_and_summary(tmp_path, clip_dir, mask0, fake_model, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        [
            clip_dir,
            "--masks",
            mask0,
            "--model",
            tmp_path / "fake.pth",
            "--out",
            out,
            "--min-dim",
            "40",
            "--chunk",
            "4",
        ],
        capsys,
    )
    assert code == 0
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names == [f"f{t:03d}.png" for t in range(6)]
    first = Image.open(out / "masks" / "f000.png")
    assert first.mode == "P" and first.getpalette()[:768] == PALETTE and first.size == (W, H)
    assert np.array_equal(np.asarray(first) > 0, np.asarray(Image.open(mask0)) > 0)
    assert (out / "overlay.mp4").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4"]  # no temporaries left
    summary = stdout.strip().splitlines()[-1]
    for part in ("6 frames", "1 objects", "FPS", "backend fake", str(out)):
        assert part in summary
    overrides = fake_model[0][3]
    assert overrides.min_dim == 40 and overrides.max_dim is None and overrides.config_path is None


def test_min_dim_alone_scales_max_dim_like_the_official_script():
    cfg = small_config(min_dim=448, max_dim=864)
    applied = ConfigOverrides(min_dim=256).apply(cfg)
    assert (applied.input.min_dim, applied.input.max_dim) == (256, 494)
    both = ConfigOverrides(min_dim=256, max_dim=300).apply(cfg)
    assert (both.input.min_dim, both.input.max_dim) == (256, 300)


def test_video_input_default_out_and_no_overlay(tmp_path, mask0, fake_model, capsys, monkeypatch):
    video = tmp_path / "walk.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=15)
        s.height, s.width, s.pix_fmt = H, W, "yuv420p"
        for t in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(frame(t), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    later = mask_png(tmp_path / "00003.png", {2: (30, 40, 40, 60)})
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli([video, "--masks", mask0, later, "--model", "fake.pth", "--no-overlay"], capsys)
    assert code == 0
    out = tmp_path / "walk.hodor-out"
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{t:05d}.png" for t in range(5)]
    assert not (out / "overlay.mp4").exists()
    masks = [np.asarray(Image.open(out / "masks" / f"{t:05d}.png")) for t in range(5)]
    assert 2 not in masks[2] and (masks[3] == 2).sum() == 200  # object 2 joins at its frame, 00003


def test_model_discovery(tmp_path, monkeypatch):
    monkeypatch.delenv(cli.MODEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.HodorError, match="no model given"):
        cli.find_model(None)
    (tmp_path / "a.hodor").mkdir()
    assert cli.find_model(None) == tmp_path / "a.hodor"
    (tmp_path / "b.hodor").mkdir()
    with pytest.raises(cli.HodorError, match="several models"):
        cli.find_model(None)
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"x")
    monkeypatch.setenv(cli.MODEL_ENV, str(ckpt))
    assert cli.find_model(None) == ckpt
    assert cli.find_model(tmp_path / "a.hodor") == tmp_path / "a.hodor"


# --------------------------------------------------------------------------- bad input: exit 2, one line


def test_missing_video(tmp_path, mask0, fake_model, capsys):
    code, _, err = run_cli(
        [tmp_path / "nope.mp4", "--masks", mask0, "--model", tmp_path / "fake.pth"], capsys
    )
    assert_user_error(code, err, "input not found", "nope.mp4")


def test_unreadable_video(tmp_path, mask0, fake_model, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    code, _, err = run_cli([junk, "--masks", mask0, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "junk.mp4", "not a readable video")


def test_video_with_no_frames(tmp_path, mask0, fake_model, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli([empty, "--masks", mask0, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "no frames")
    video = tmp_path / "empty.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width, s.pix_fmt = H, W, "yuv420p"
    code, _, err = run_cli([video, "--masks", mask0, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "empty.mp4")


def test_mask_size_differs_from_frames(tmp_path, clip_dir, fake_model, capsys):
    small = mask_png(tmp_path / "small.png", {1: (0, 5, 0, 5)}, size=(20, 30))
    code, _, err = run_cli([clip_dir, "--masks", small, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "30x20", f"{W}x{H}")


def test_mask_with_no_object(tmp_path, clip_dir, fake_model, capsys):
    blank = mask_png(tmp_path / "blank.png", {})
    code, _, err = run_cli([clip_dir, "--masks", blank, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "blank.png", "no object")


def test_mask_bound_past_the_end(tmp_path, clip_dir, mask0, fake_model, capsys):
    code, _, err = run_cli([clip_dir, "--masks", f"{mask0}@6", "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "frame 6", "only 6 frames")


def test_missing_mask_file(tmp_path, clip_dir, fake_model, capsys):
    code, _, err = run_cli(
        [clip_dir, "--masks", tmp_path / "gone.png", "--model", tmp_path / "fake.pth"], capsys
    )
    assert_user_error(code, err, "mask not found")


def test_no_model_given_and_none_found(tmp_path, clip_dir, mask0, capsys, monkeypatch):
    monkeypatch.delenv(cli.MODEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([clip_dir, "--masks", mask0], capsys)
    assert_user_error(code, err, "no model given", "--model", cli.MODEL_ENV)


def test_missing_model_file(tmp_path, clip_dir, mask0, capsys):
    code, _, err = run_cli([clip_dir, "--masks", mask0, "--model", tmp_path / "nope.pth"], capsys)
    assert_user_error(code, err, "model not found")


def test_not_a_checkpoint(tmp_path, clip_dir, mask0, capsys, parity_checkpoint):
    fake = tmp_path / "ckpt" / "model.pth"
    fake.parent.mkdir()
    fake.write_text("definitely not a checkpoint\n")
    (fake.parent / "config.yaml").write_bytes((parity_checkpoint.parent / "config.yaml").read_bytes())
    code, _, err = run_cli([clip_dir, "--masks", mask0, "--model", fake, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, "model.pth", "checkpoint")


def test_checkpoint_keys_do_not_match_config(tmp_path, clip_dir, mask0, capsys, parity_checkpoint):
    state = torch.load(parity_checkpoint, map_location="cpu", weights_only=True)["model"]
    original = sorted(state)[len(state) // 2]
    renamed = original.replace(".", ".renamed.", 1)
    state[renamed] = state.pop(original)
    ckpt = tmp_path / "renamed" / "model.pth"
    ckpt.parent.mkdir()
    torch.save({"model": state}, ckpt)
    (ckpt.parent / "config.yaml").write_bytes((parity_checkpoint.parent / "config.yaml").read_bytes())
    code, _, err = run_cli([clip_dir, "--masks", mask0, "--model", ckpt, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, original, renamed)


def test_unsupported_config_value(tmp_path, clip_dir, mask0, capsys):
    ckpt = tmp_path / "m" / "model.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    (ckpt.parent / "config.yaml").write_text(yaml.safe_dump({"MODEL": {"NUM_ATTN_HEADS": 4}}))
    code, _, err = run_cli([clip_dir, "--masks", mask0, "--model", ckpt, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, "NUM_ATTN_HEADS")


def test_missing_config(tmp_path, clip_dir, mask0, capsys):
    ckpt = tmp_path / "m" / "model.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    code, _, err = run_cli([clip_dir, "--masks", mask0, "--model", ckpt, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, "config", "--config")


def test_output_dir_cannot_be_written(tmp_path, clip_dir, mask0, fake_model, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a directory")
    code, _, err = run_cli(
        [clip_dir, "--masks", mask0, "--model", tmp_path / "fake.pth", "--out", blocker], capsys
    )
    assert_user_error(code, err, "taken")
    code, _, err = run_cli(
        [clip_dir, "--masks", mask0, "--model", tmp_path / "fake.pth", "--out", blocker / "sub"], capsys
    )
    assert_user_error(code, err, "cannot write")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is present")
def test_cuda_without_a_gpu(tmp_path, clip_dir, mask0, capsys, parity_checkpoint):
    code, _, err = run_cli(
        [
            clip_dir,
            "--masks",
            mask0,
            "--model",
            parity_checkpoint,
            "--device",
            "cuda",
            "--out",
            tmp_path / "o",
        ],
        capsys,
    )
    assert_user_error(code, err, "--device cuda")


def test_export_directory_without_its_backend(tmp_path, clip_dir, mask0, capsys, monkeypatch):
    from hodor.engine.backends import registry as backends

    monkeypatch.setattr(backends, "EXPORT_BACKENDS", {})
    export = tmp_path / "m.hodor"
    export.mkdir()
    code, _, err = run_cli([clip_dir, "--masks", mask0, "--model", export, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, "export directory")


def test_console_script_exits_2_without_traceback(tmp_path, mask0):
    """The installed entry point, in a fresh process."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hodor.engine.cli import main; sys.exit(main())",
            str(tmp_path / "missing.mp4"),
            "--masks",
            str(mask0),
            "--model",
            str(mask0),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hodor-run: error: input not found: {tmp_path / 'missing.mp4'}"
    ]


def test_palette_default_when_masks_have_none(tmp_path, clip_dir, fake_model, capsys):
    ids = np.zeros((H, W), np.uint8)
    ids[10:26, 4:20] = 3
    Image.fromarray(ids, mode="L").save(tmp_path / "grey.png")
    out = tmp_path / "o"
    code, _, _ = run_cli(
        [
            clip_dir,
            "--masks",
            tmp_path / "grey.png",
            "--model",
            tmp_path / "fake.pth",
            "--out",
            out,
            "--no-overlay",
        ],
        capsys,
    )
    assert code == 0
    assert Image.open(out / "masks" / "f000.png").getpalette()[:768] == default_palette()


# --------------------------------------------------------------------------- the output directory


def run_into(out: Path, frames_dir: Path, mask: Path, model_dir: Path, capsys, *extra):
    return run_cli(
        [
            frames_dir,
            "--masks",
            mask,
            "--model",
            model_dir / "fake.pth",
            "--out",
            out,
            "--no-overlay",
            *extra,
        ],
        capsys,
    )


PROGRESS_BAR = re.compile(r"^hodor-run: +\d+%\|")


def without_progress(err: str) -> str:
    """stderr without the progress bar's lines (a run that fails mid-video has shown it)."""
    return "\n".join(line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.match(line))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def frames_dir(root: Path, count: int, odd_one: int | None = None) -> Path:
    """A directory of ``count`` frames f000.png ...; frame ``odd_one`` of another size."""
    root.mkdir()
    for t in range(count):
        image = frame(t) if t != odd_one else np.zeros((H + 8, W, 3), np.uint8)
        Image.fromarray(image).save(root / f"f{t:03d}.png")
    return root


def test_a_rerun_replaces_the_previous_outputs_whole(tmp_path, clip_dir, mask0, fake_model, capsys):
    out = tmp_path / "out"
    assert (
        run_cli([clip_dir, "--masks", mask0, "--model", tmp_path / "fake.pth", "--out", out], capsys)[0] == 0
    )
    assert len(list((out / "masks").iterdir())) == 6 and (out / "overlay.mp4").is_file()
    shorter = frames_dir(tmp_path / "shorter", 3)
    assert run_into(out, shorter, mask0, tmp_path, capsys)[0] == 0
    # Only this run's outputs: three masks, and no overlay (--no-overlay), nothing of the longer run.
    assert sorted(tree(out)) == ["masks/f000.png", "masks/f001.png", "masks/f002.png"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_second_run_into_the_same_output_is_refused(tmp_path, clip_dir, mask0, fake_model, capsys):
    from hodor.engine.io import OutputLock

    out = tmp_path / "out"
    with OutputLock(out, holder="hodor-run"):
        code, _, err = run_into(out, clip_dir, mask0, tmp_path, capsys)
    assert_user_error(code, err, str(out), "being written by another run", f"pid {os.getpid()}")
    assert not out.exists() and not fake_model, "refused before loading the model or writing anything"


def test_what_a_killed_run_left_is_cleaned_up(tmp_path, clip_dir, mask0, fake_model, capsys):
    leftover = tmp_path / ".out.staging-999999-0badc0de"  # a run killed while writing
    (leftover / "masks").mkdir(parents=True)
    (leftover / "masks" / "f000.png").write_bytes(b"half")
    assert run_into(tmp_path / "out", clip_dir, mask0, tmp_path, capsys)[0] == 0
    assert not leftover.exists()


def test_an_error_mid_video_leaves_the_previous_output_untouched(
    tmp_path, clip_dir, mask0, fake_model, capsys
):
    out = tmp_path / "out"
    assert run_into(out, clip_dir, mask0, tmp_path, capsys)[0] == 0
    before = tree(out)
    broken = frames_dir(tmp_path / "broken", 6, odd_one=4)  # frame 4 has another size
    other = mask_png(tmp_path / "other.png", {2: (30, 40, 40, 60)})  # another object: other masks
    # Two frames per chunk: frames 0-3 are segmented (and were written) before frame 4 is read.
    code, _, err = run_into(out, broken, f"{other}@0", tmp_path, capsys, "--chunk", "2")
    assert_user_error(code, without_progress(err), "f004.png", "same size")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_error_mid_video_with_no_previous_output_leaves_nothing(tmp_path, mask0, fake_model, capsys):
    broken = frames_dir(tmp_path / "broken", 6, odd_one=4)
    code, _, err = run_into(tmp_path / "new" / "out", broken, mask0, tmp_path, capsys)
    assert code == 2 and not (tmp_path / "new").exists()


def test_ctrl_c_leaves_the_previous_output_untouched(
    tmp_path, clip_dir, mask0, fake_model, capsys, monkeypatch
):
    out = tmp_path / "out"
    assert (
        run_cli([clip_dir, "--masks", mask0, "--model", tmp_path / "fake.pth", "--out", out], capsys)[0] == 0
    )
    before = tree(out)
    # Ctrl-C while the third frame's mask is written. Keyed on the frame, not on the order of the
    # calls: the writers are a pool, and the third call to start may be the second frame's.
    third = sorted((out / "masks").iterdir())[2].name

    def write_then_interrupt(path, ids, palette):
        if Path(path).name == third:
            raise KeyboardInterrupt
        write_mask(path, ids, palette)

    monkeypatch.setattr(cli, "write_mask", write_then_interrupt)
    other = mask_png(tmp_path / "other.png", {2: (30, 40, 40, 60)})  # another object: other masks
    code, _, err = run_cli(
        [clip_dir, "--masks", f"{other}@0", "--model", tmp_path / "fake.pth", "--out", out], capsys
    )
    assert code == 130
    assert (
        err.strip().splitlines()[-1]
        == f"hodor-run: interrupted after 2 of 6 frames; nothing was written to {out}"
    )
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_refused_run_leaves_no_output_directory(tmp_path, clip_dir, fake_model, capsys):
    speck = mask_png(tmp_path / "speck.png", {1: (20, 21, 30, 31)})  # one pixel: gone at 1/8
    code, _, err = run_into(tmp_path / "runs" / "out", clip_dir, f"{speck}@0", tmp_path, capsys)
    assert_user_error(code, without_progress(err), "too small")
    assert not (tmp_path / "runs").exists()


def test_an_output_directory_with_other_files_is_not_replaced(tmp_path, clip_dir, mask0, fake_model, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    code, _, err = run_into(precious, clip_dir, mask0, tmp_path, capsys)
    assert_user_error(code, err, "thesis.tex", "not hodor-run outputs", "--out")
    assert tree(precious) == {"thesis.tex": b"do not delete"}


# --------------------------------------------------------------------------- videos that end early


def cut_video(path: Path, declared: int = 40, kept: int = 20, mid_packet: bool = False) -> Path:
    """An H.264 mp4 with its index at the front, cut after packet ``kept`` (or in its middle)."""
    full = path.with_name("full-" + path.name)
    with av.open(str(full), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width, s.pix_fmt = H, W, "yuv420p"
        s.options = {"bf": "0"}  # packets in display order: kept packets are the first frames
        for t in range(declared):
            for p in s.encode(av.VideoFrame.from_ndarray(frame(t % 20), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(full)) as c:
        packets = sorted((p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size)
    pos, size = packets[kept - 1]
    path.write_bytes(full.read_bytes()[: pos + (size // 2 if mid_packet else size)])
    return path


@pytest.mark.parametrize("mid_packet", [False, True], ids=["ends-early", "damaged-last-packet"])
def test_a_video_cut_short_says_how_many_frames_of_how_many(tmp_path, mask0, fake_model, capsys, mid_packet):
    video = cut_video(tmp_path / "cut.mp4", declared=16, kept=8, mid_packet=mid_packet)
    written = 7 if mid_packet else 8
    out = tmp_path / "out"
    first = mask_png(tmp_path / "00000.png", {1: (10, 26, 4, 20)})
    code, stdout, err = run_cli(
        [video, "--masks", first, "--model", tmp_path / "fake.pth", "--out", out], capsys
    )
    assert code == cli.EXIT_INCOMPLETE_INPUT == 3
    lines = without_progress(err).splitlines()
    assert len(lines) == 1 and lines[0].startswith("hodor-run: incomplete input: cut.mp4"), err
    assert f"the masks of the {written} frames before are in {out}" in lines[0]
    assert stdout.strip().splitlines()[-1].endswith(f"(incomplete: {written} of 16 frames)")
    assert len(list((out / "masks").iterdir())) == written and (out / "overlay.mp4").is_file()
    marker = json.loads((out / "INCOMPLETE.json").read_text())
    assert (marker["frames_written"], marker["frames_expected"]) == (written, 16)


def test_a_whole_video_is_not_reported_incomplete(tmp_path, mask0, fake_model, capsys):
    video = cut_video(tmp_path / "whole.mp4", declared=12, kept=12)
    first = mask_png(tmp_path / "00000.png", {1: (10, 26, 4, 20)})
    out = tmp_path / "out"
    code, _, err = run_cli([video, "--masks", first, "--model", tmp_path / "fake.pth", "--out", out], capsys)
    assert code == 0, err
    assert len(list((out / "masks").iterdir())) == 12 and not (out / "INCOMPLETE.json").exists()


# --------------------------------------------------------------------------- sizes


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width x height`` pixels (Pillow reads the size without decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # greyscale, 8 bits
    idat = zlib.compress(b"\0" * (width + 1))  # one row; the rest never decoded
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_frame_over_the_pixel_limit_is_a_one_line_error(tmp_path, mask0, fake_model, capsys):
    huge = tmp_path / "huge"
    huge.mkdir()
    png_header(huge / "f000.png", 20000, 10000)  # 200 megapixels
    code, _, err = run_cli([huge, "--masks", mask0, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "f000.png", "too large", "200,000,000 pixels", "178,956,970")


def test_a_mask_over_the_pixel_limit_is_a_one_line_error(tmp_path, clip_dir, fake_model, capsys):
    mask = png_header(tmp_path / "f000.png", 20000, 10000)
    code, _, err = run_cli([clip_dir, "--masks", mask, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "f000.png", "mask is too large")


def test_a_video_over_the_pixel_limit_is_a_one_line_error(tmp_path, mask0, fake_model, capsys, monkeypatch):
    video = cut_video(tmp_path / "v.mp4", declared=4, kept=4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", (H * W) // 2 - 1)  # the limit follows Pillow's
    code, _, err = run_cli([video, "--masks", mask0, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "v.mp4", "too large", f"{W}x{H}")


@pytest.mark.parametrize(
    "options, cause",
    [
        (["--min-dim", "100000"], "--min-dim 100000 (alone, it scales --max-dim"),
        (["--max-dim", "5000"], "--max-dim 5000"),
    ],
)
def test_a_processing_size_over_the_bound_is_a_one_line_error(
    tmp_path, clip_dir, mask0, fake_model, capsys, options, cause
):
    code, _, err = run_into(tmp_path / "out", clip_dir, mask0, tmp_path, capsys, *options)
    assert_user_error(code, err, "processing size too large", cause, str(cli.MAX_PROCESSING_SIDE))
    assert not (tmp_path / "out").exists()


def test_the_largest_processing_size_is_accepted(tmp_path, clip_dir, mask0, fake_model, capsys):
    code, _, err = run_into(tmp_path / "out", clip_dir, mask0, tmp_path, capsys, "--max-dim", "4096")
    assert code == 0, err


# --------------------------------------------------------------------------- masks and arguments


@pytest.mark.parametrize(
    "name, message",
    [
        ("00050.png", "bound to frame 50, but"),  # a video's frames are numbered: past the end
        ("00050.png@0", None),  # an explicit frame wins
    ],
)
def test_a_numbered_mask_past_the_end_of_a_video_is_an_error(tmp_path, fake_model, capsys, name, message):
    video = cut_video(tmp_path / "v.mp4", declared=12, kept=12)
    mask = mask_png(tmp_path / "00050.png", {1: (10, 26, 4, 20)})
    arg = str(mask) + name.removeprefix("00050.png")
    code, _, err = run_cli(
        [video, "--masks", arg, "--model", tmp_path / "fake.pth", "--out", tmp_path / "o"], capsys
    )
    if message is None:
        assert code == 0, err
    else:
        assert_user_error(code, err, "00050.png", message, "only 12 frames")


def test_a_mask_named_like_the_frames_but_matching_none_is_an_error(tmp_path, clip_dir, fake_model, capsys):
    stray = mask_png(tmp_path / "f050.png", {1: (10, 26, 4, 20)})
    code, _, err = run_cli([clip_dir, "--masks", stray, "--model", tmp_path / "fake.pth"], capsys)
    assert_user_error(code, err, "f050.png", "named like a frame", "f000 ... f005", "@K")


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["video.mp4", "--temporal-window", "zero", "--masks", "m.png"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err.splitlines() == [
        "hodor-run: error: argument --temporal-window: expected a positive integer, got 'zero' "
        "(see hodor-run --help)"
    ]
    with pytest.raises(SystemExit):
        cli.main([])
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_version(capsys):
    import hodor

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hodor-run {hodor.__version__}"
