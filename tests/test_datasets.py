"""hodor-run's dataset mode on the fake backend: each layout, resume, failing and interrupted
sequences, the summary, and the dispatch from ``hodor-run``."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hodor.engine import cli
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.datasets import segment, worker
from hodor.engine.datasets.cli import is_dataset_invocation
from hodor.engine.io import default_palette
from hodor.engine.loop.session import VideoSession
from tests.engine_fake_backend import FakeBackend, small_config
from tests.synthetic_data import make_dataset

SIZE = (64, 96)


@pytest.fixture
def model(tmp_path, monkeypatch) -> dict:
    """A model path that exists, opened as the fake backend; counts the loads."""
    loads = {"count": 0}

    def open_fake(model_path, backend, device, overrides: ConfigOverrides, torch_options=None):
        loads["count"] += 1
        return FakeBackend(config=overrides.apply(small_config(min_dim=64, max_dim=128)))

    monkeypatch.setattr(worker, "open_backend", open_fake)
    (tmp_path / "fake.pth").write_bytes(b"x")
    loads["path"] = tmp_path / "fake.pth"
    return loads


@pytest.fixture
def davis(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "DAVIS"
    names = make_dataset(root, sequences=3, frames=5, size=SIZE, objects=2, seed=5)
    return root, names


def run(args, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def summary_rows(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as f:
        return {row["sequence"]: row for row in csv.DictReader(f)}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hodor-run: ") and "%|" not in line]


def pngs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.png"))


# --------------------------------------------------------------------------- DAVIS


def test_davis_root_runs_the_image_set_with_one_model_load(tmp_path, davis, model, capsys):
    root, names = davis
    make_dataset(tmp_path / "extra", sequences=1, frames=4, size=SIZE, seed=9)
    shutil.copytree(
        tmp_path / "extra" / "JPEGImages" / "480p" / "synth-00", root / "JPEGImages" / "480p" / "zz"
    )
    shutil.copytree(
        tmp_path / "extra" / "Annotations" / "480p" / "synth-00", root / "Annotations" / "480p" / "zz"
    )
    out = tmp_path / "out"
    code, stdout, err = run([root, "--model", model["path"], "--out", out], capsys)
    assert code == 0, err
    assert model["count"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "summary.csv", "summary.json"])  # not zz
    for name in names:
        frames = sorted(p.stem for p in (root / "JPEGImages" / "480p" / name).glob("*.jpg"))
        assert pngs(out / name) == [f"{s}.png" for s in frames]
        first = Image.open(out / name / "00000.png")
        assert first.mode == "P" and first.getpalette()[:768] == default_palette()
        gt = np.asarray(Image.open(root / "Annotations" / "480p" / name / "00000.png"))
        assert np.array_equal(np.asarray(first), gt)  # the reference frame shows the given mask
    rows = summary_rows(out)
    assert list(rows) == names
    for row in rows.values():
        assert row["status"] == "ok" and row["frames"] == "5" and row["objects"] == "2" and not row["error"]
        assert float(row["seconds"]) > 0 and float(row["fps"]) > 0
    document = json.loads((out / "summary.json").read_text())
    assert [s["sequence"] for s in document["sequences"]] == names
    assert document["run"]["layout"] == "davis"
    assert (
        stdout.strip().splitlines()[-1].startswith("3 sequences: 3 done, 0 skipped (done earlier), 0 failed;")
    )


def test_seqs_and_split(tmp_path, davis, model, capsys):
    root, names = davis
    out = tmp_path / "out"
    code, _, err = run([root, "--model", model["path"], "--out", out, "--seqs", names[2], names[0]], capsys)
    assert code == 0, err
    assert list(summary_rows(out)) == [names[2], names[0]]
    listing = tmp_path / "mine.txt"
    listing.write_text(f"# two of them\n{names[1]}\n\n")
    code, _, err = run([root, "--model", model["path"], "--out", tmp_path / "o2", "--seqs", listing], capsys)
    assert code == 0, err
    assert list(summary_rows(tmp_path / "o2")) == [names[1]]
    code, _, err = run([root, "--model", model["path"], "--split", "test-dev"], capsys)
    assert code == 2 and "test-dev.txt not found (splits here: val)" in error_lines(err)[0]


# --------------------------------------------------------------------------- YouTube-VOS


def test_youtube_vos_objects_appear_later_and_only_expected_frames_are_written(
    tmp_path, model, capsys, monkeypatch
):
    root = tmp_path / "ytvos"
    names = make_dataset(root, sequences=2, frames=6, size=SIZE, objects=2, seed=2, layout="youtube-vos")
    meta_path = root / "valid" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for name in names:
        for obj in meta["videos"][name]["objects"].values():
            obj["frames"] = [f for f in obj["frames"] if f != "00025"]  # the benchmark skips the last frame
    meta_path.write_text(json.dumps(meta))
    # A later annotation that also shows object 1 again: the benchmark gives object 1 only once.
    late = {name: meta["videos"][name]["objects"]["2"]["frames"][0] for name in names}
    annotation = root / "valid" / "Annotations" / names[0] / f"{late[names[0]]}.png"
    ids = np.asarray(Image.open(annotation)).copy()
    ids[:6, :6] = 1
    image = Image.fromarray(ids, mode="P")
    image.putpalette(default_palette())
    image.save(annotation)

    given: dict[str, dict[int, list[int]]] = {}
    real_run = VideoSession.run

    def spy(self, frames, masks=None):
        given[str(frames.path.name)] = {
            t: sorted(int(i) for i in np.unique(m) if i) for t, m in masks.items()
        }
        return real_run(self, frames, masks)

    monkeypatch.setattr(VideoSession, "run", spy)
    out = tmp_path / "out"
    code, stdout, err = run([root, "--model", model["path"], "--out", out], capsys)
    assert code == 0, err
    for name in names:
        entry = int(late[name]) // 5
        assert given[name] == {0: [1], entry: [2]}
        expected = [f"{5 * t:05d}.png" for t in range(5)]
        assert pngs(out / name) == expected
        before = [np.asarray(Image.open(out / name / f"{5 * t:05d}.png")) for t in range(entry)]
        assert not any((m == 2).any() for m in before)  # object 2 exists only from its first frame
    with zipfile.ZipFile(out / "Annotations.zip") as archive:
        listed = sorted(archive.namelist())
        assert listed == sorted(f"Annotations/{n}/{5 * t:05d}.png" for n in names for t in range(5))
        data = archive.read(f"Annotations/{names[1]}/00010.png")
    assert data == (out / names[1] / "00010.png").read_bytes()
    assert "Annotations.zip written" in stdout


# --------------------------------------------------------------------------- list of videos


def test_video_list_csv_and_json(tmp_path, davis, model, capsys):
    root, names = davis
    frames = root / "JPEGImages" / "480p"
    annotations = root / "Annotations" / "480p"
    listing = tmp_path / "videos.csv"
    rel = Path("DAVIS") / "JPEGImages" / "480p"
    listing.write_text(
        "name,video,masks\n"
        f",{rel / names[0]},{annotations / names[0] / '00000.png'}\n"
        f"second,{frames / names[1]},{annotations / names[1] / '00000.png'};"
        f"{annotations / names[1] / '00003.png'}@3\n"
    )
    out = tmp_path / "out-csv"
    code, _, err = run([listing, "--model", model["path"], "--out", out], capsys)
    assert code == 0, err
    assert list(summary_rows(out)) == [names[0], "second"]
    frame3 = np.asarray(Image.open(out / "second" / "00003.png"))
    assert np.array_equal(
        frame3, np.asarray(Image.open(annotations / names[1] / "00003.png"))
    )  # re-annotated

    as_json = tmp_path / "videos.json"
    entries = [
        {"name": "a", "video": str(frames / names[2]), "masks": [str(annotations / names[2] / "00000.png")]}
    ]
    as_json.write_text(json.dumps({"videos": entries}))
    code, _, err = run([as_json, "--model", model["path"], "--out", tmp_path / "out-json"], capsys)
    assert code == 0, err
    assert pngs(tmp_path / "out-json" / "a") == [f"{t:05d}.png" for t in range(5)]

    entries.append(dict(entries[0]))
    as_json.write_text(json.dumps(entries))
    code, _, err = run([as_json, "--model", model["path"]], capsys)
    assert code == 2 and "several videos are named 'a'" in error_lines(err)[0]


# --------------------------------------------------------------------------- resume, failures


def test_resume_skips_done_sequences_and_redoes_partial_ones(tmp_path, davis, model, capsys):
    root, names = davis
    out = tmp_path / "out"
    assert run([root, "--model", model["path"], "--out", out], capsys)[0] == 0
    (out / names[0] / "00002.png").unlink()  # partial: a mask is missing
    shutil.rmtree(out / names[1])  # never finished: only its staging is left
    (out / ".staging" / f"{names[1]}.host.1.abc").mkdir(parents=True)
    (out / ".staging" / f"{names[1]}.host.1.abc" / "00000.png").write_bytes(b"half")
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / names[2]).iterdir()}

    code, stdout, err = run([root, "--model", model["path"], "--out", out, "--resume"], capsys)
    assert code == 0, err
    rows = summary_rows(out)
    assert [rows[n]["status"] for n in names] == ["ok", "ok", "skipped"]
    assert rows[names[2]]["frames"] == "5" and rows[names[2]]["objects"] == "2"
    assert {p.name: p.stat().st_mtime_ns for p in (out / names[2]).iterdir()} == done_before
    assert pngs(out / names[0]) == pngs(out / names[1]) == [f"{t:05d}.png" for t in range(5)]
    assert not (out / ".staging").exists()
    assert "2 done, 1 skipped (done earlier), 0 failed" in stdout

    assert run([root, "--model", model["path"], "--out", out, "--resume"], capsys)[0] == 0
    assert model["count"] == 2  # the third run found everything done: no model load
    code, _, _ = run([root, "--model", model["path"], "--out", out], capsys)  # without --resume: redo all
    assert code == 0 and {r["status"] for r in summary_rows(out).values()} == {"ok"}


def test_interrupted_sequence_is_never_taken_for_done(tmp_path, davis, model, capsys, monkeypatch):
    root, names = davis
    out = tmp_path / "out"
    calls = {"n": 0}
    real_write = segment.write_mask

    def write_then_stop(path, ids, palette):
        calls["n"] += 1
        if calls["n"] == 8:  # the third mask of the second sequence
            raise KeyboardInterrupt
        real_write(path, ids, palette)

    monkeypatch.setattr(segment, "write_mask", write_then_stop)
    code, _, err = run([root, "--model", model["path"], "--out", out], capsys)
    assert code == 130 and "interrupted" in err
    assert (out / names[0]).is_dir() and not (out / names[1]).exists()
    assert not list((out / ".staging").iterdir())  # the interrupted sequence's staging was removed
    monkeypatch.setattr(segment, "write_mask", real_write)
    code, _, err = run([root, "--model", model["path"], "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert [r["status"] for r in summary_rows(out).values()] == ["skipped", "ok", "ok"]


def test_a_failing_sequence_is_reported_and_the_others_go_on(tmp_path, davis, model, capsys):
    root, names = davis
    for png in (root / "Annotations" / "480p" / names[0]).glob("*.png"):
        png.unlink()
    (root / "JPEGImages" / "480p" / names[1] / "00003.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code, stdout, err = run([root, "--model", model["path"], "--out", out], capsys)
    assert code == 1
    rows = summary_rows(out)
    assert [rows[n]["status"] for n in names] == ["failed", "failed", "ok"]
    assert "mask not found" in rows[names[0]]["error"] and "00000.png" in rows[names[0]]["error"]
    assert "00003.jpg: cannot read this image" in rows[names[1]]["error"]
    lines = error_lines(err)
    assert len(lines) == 2 and all("failed:" in line for line in lines)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [names[2]]  # nothing half-written
    assert "1 done, 0 skipped (done earlier), 2 failed" in stdout


# --------------------------------------------------------------------------- the command line


def test_dispatch_between_one_video_and_a_dataset(tmp_path, davis):
    root, _ = davis
    video_dir = root / "JPEGImages" / "480p" / "synth-00"
    assert is_dataset_invocation([str(root)])
    assert is_dataset_invocation(["--model", "m.pth", str(root), "--min-dim", "64"])
    assert is_dataset_invocation(["anything", "--resume"])
    assert is_dataset_invocation([str(tmp_path / "absent.csv"), "--layout", "list"])
    assert not is_dataset_invocation([str(video_dir), "--masks", "m.png"])
    assert not is_dataset_invocation(["video.mp4"])  # one video, masks forgotten: the single-video error


def test_not_a_dataset_and_a_path_inside_one(tmp_path, davis, model, capsys):
    root, _ = davis
    plain = tmp_path / "frames"
    plain.mkdir()
    code, _, err = run([plain, "--model", model["path"]], capsys)
    assert code == 2 and "is not a dataset: expected DAVIS" in error_lines(err)[0]
    assert "to segment one video, give its reference masks with --masks" in error_lines(err)[0]
    code, _, err = run([root / "JPEGImages" / "480p", "--model", model["path"]], capsys)
    assert code == 2 and f"give its root ({root.resolve()})" in error_lines(err)[0]


def test_refused_model_leaves_no_output(tmp_path, davis, capsys):
    root, _ = davis
    out = tmp_path / "out"
    code, _, err = run([root, "--model", tmp_path / "absent.pth", "--out", out], capsys)
    assert code == 2 and "model not found" in error_lines(err)[0]
    assert not out.exists()


def test_ray_not_installed_says_how_to_install(tmp_path, davis, model, capsys, monkeypatch):
    root, _ = davis
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run([root, "--model", model["path"], "--out", tmp_path / "out", "--ray"], capsys)
    assert code == 2 and "pip install 'hodor-engine[ray]'" in error_lines(err)[0]
