"""``hodor-run``: outputs, defaults, model discovery, and one test per bad input (exit 2, one line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hodor.engine import cli
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.io import default_palette
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
