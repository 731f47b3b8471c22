"""``hodor-run A --masks ... B --masks ...``: several videos in one batch, against each run alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hodor.engine import batch_cli, cli
from hodor.engine.backends.base import ConfigOverrides
from hodor.errors import HodorError
from tests.engine_fake_backend import FakeBackend, small_config
from tests.test_cli_run import PALETTE, assert_user_error, mask_png

H, W = 48, 64


def clip(directory: Path, n: int, size: tuple[int, int] = (H, W), shift: int = 0) -> Path:
    directory.mkdir()
    h, w = size
    for t in range(n):
        f = np.full((h, w, 3), 50, np.uint8)
        f[10:26, 4 + shift + 2 * t : 20 + shift + 2 * t] = (240, 40, 40)
        f[28:44, 30:50] = (40, 220, 60)
        Image.fromarray(f).save(directory / f"f{t:03d}.png")
    return directory


@pytest.fixture
def fake_model(tmp_path, monkeypatch) -> dict:
    """The model path opens the stand-in network; ``options["max_streams"]`` limits its batches."""
    options: dict = {"max_streams": None, "opened": 0}

    def open_fake(model_path, backend, device, overrides: ConfigOverrides, torch_options=None):
        options["opened"] += 1
        config = overrides.apply(small_config(min_dim=48, max_dim=96))
        return FakeBackend(config=config, max_streams=options["max_streams"])

    monkeypatch.setattr(cli, "open_backend", open_fake)
    (tmp_path / "fake.pth").write_bytes(b"x")
    return options


@pytest.fixture
def inputs(tmp_path) -> dict[str, tuple[Path, list[Path]]]:
    """Three videos: a and b of one size, c of another and shorter; their own masks."""
    masks = tmp_path / "masks"
    masks.mkdir()
    a = clip(tmp_path / "a", 6)
    b = clip(tmp_path / "b", 6, shift=8)
    c = clip(tmp_path / "c", 4, size=(96, 48))  # pads to 96x64, a and b to 64x64
    return {
        "a": (a, [mask_png(masks / "a0.png", {1: (10, 26, 4, 20), 2: (28, 44, 30, 50)})]),
        "b": (b, [mask_png(masks / "f002.png", {3: (10, 26, 16, 32)})]),  # binds to b's frame 2
        "c": (c, [mask_png(masks / "c0.png", {1: (28, 44, 30, 46)}, size=(96, 48))]),
    }


def masks_of(directory: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(directory.iterdir())}


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_several_inputs_are_segmented_together_as_each_alone(tmp_path, inputs, fake_model, capsys):
    argv = []
    for video, masks in inputs.values():
        argv += [video, "--masks", *masks]
    out = tmp_path / "out"
    code, stdout, err = run([*argv, "--model", tmp_path / "fake.pth", "--out", out, "--no-overlay"], capsys)
    assert code == 0, err
    assert fake_model["opened"] == 1  # one model for every video
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c"]
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("3 videos, 16 frames, 4 objects") and "backend fake" in summary, summary
    for name, (video, masks) in inputs.items():
        alone = tmp_path / f"alone-{name}"
        model = ["--model", tmp_path / "fake.pth"]
        code, _, err = run([video, "--masks", *masks, *model, "--out", alone, "--no-overlay"], capsys)
        assert code == 0, err
        got, want = masks_of(out / name / "masks"), masks_of(alone / "masks")
        assert list(got) == list(want), name
        assert all(np.array_equal(got[k], want[k]) for k in want), name
        assert len(np.unique(want["f003.png"])) > 1, name  # objects are tracked: not a vacuous comparison
        first = Image.open(out / name / "masks" / "f000.png")
        assert first.mode == "P" and first.getpalette()[:768] == PALETTE


def test_options_may_come_before_between_and_after_the_groups_and_overlays_are_written(
    tmp_path, inputs, fake_model, capsys
):
    (a, a_masks), (b, b_masks) = inputs["a"], inputs["b"]
    out = tmp_path / "out"
    model = ["--model", tmp_path / "fake.pth"]
    window = ["--temporal-window", "2"]
    argv = [*model, a, "--masks", *a_masks, *window, b, "--masks", *b_masks, "--out", out]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    for name in ("a", "b"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["masks", "overlay.mp4"]


def test_the_groups_are_split_by_the_input_before_each_masks():
    argv = ["--model", "m", "A", "--masks", "a1", "a2@4", "B", "--masks", "b1", "--out", "o"]
    groups, rest = batch_cli.split_groups([*argv, "C", "--masks", "c"])
    assert groups == [
        batch_cli.InputGroup("A", ("a1", "a2@4")),
        batch_cli.InputGroup("B", ("b1",)),
        batch_cli.InputGroup("C", ("c",)),
    ]
    assert rest == ["--model", "m", "--out", "o"]
    assert batch_cli.is_batch_invocation(["A", "--masks", "a", "B", "--masks", "b"])
    assert not batch_cli.is_batch_invocation(["A", "--masks", "a", "b"])
    with pytest.raises(HodorError, match="follows no input"):
        batch_cli.split_groups(["A", "--masks", "a", "--no-overlay", "--masks", "b"])
    with pytest.raises(HodorError, match="names no mask file"):
        batch_cli.split_groups(["A", "--masks", "B", "--masks", "b"])


def test_inputs_of_the_same_name_are_refused(tmp_path, inputs, fake_model, capsys):
    (a, masks) = inputs["a"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = clip(other / "a", 3)
    model = ["--model", tmp_path / "fake.pth"]
    argv = [a, "--masks", *masks, twin, "--masks", *masks, *model, "--out", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert_user_error(code, err, "two inputs are named 'a'")
    assert not (tmp_path / "o").exists()


def test_more_videos_than_the_backend_takes_names_the_option_and_writes_nothing(
    tmp_path, inputs, fake_model, capsys
):
    fake_model["max_streams"] = 1
    (a, a_masks), (b, b_masks) = inputs["a"], inputs["b"]
    out = tmp_path / "out"
    code, _, err = run(
        [a, "--masks", *a_masks, b, "--masks", *b_masks, "--model", tmp_path / "fake.pth", "--out", out],
        capsys,
    )
    assert_user_error(code, err, "--max-streams")
    assert not out.exists()
    # Different padded sizes are separate calls: a and c pass the same limit.
    (c, c_masks) = inputs["c"]
    code, _, err = run(
        [a, "--masks", *a_masks, c, "--masks", *c_masks, "--model", tmp_path / "fake.pth", "--out", out],
        capsys,
    )
    assert code == 0, err


def test_an_output_directory_holding_other_things_is_refused(tmp_path, inputs, fake_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    (a, a_masks), (b, b_masks) = inputs["a"], inputs["b"]
    code, _, err = run(
        [a, "--masks", *a_masks, b, "--masks", *b_masks, "--model", tmp_path / "fake.pth", "--out", out],
        capsys,
    )
    assert_user_error(code, err, "not this run's videos", "thesis.tex")
    assert (out / "thesis.tex").read_text() == "keep"
