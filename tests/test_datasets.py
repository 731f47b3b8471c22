"""hodor-run's dataset mode on the fake backend: each layout, resume, failing and interrupted
sequences, the summary, and the dispatch from ``hodor-run``."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
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
from hodor.engine.datasets.davis import davis_sequences
from hodor.engine.datasets.record import finished_record
from hodor.engine.datasets.summary import OK
from hodor.engine.io import StagedDir, claim_output_entries, default_palette
from hodor.engine.loop.session import VideoSession
from tests.engine_fake_backend import FakeBackend, small_config
from tests.synthetic_data import make_dataset

SIZE = (64, 96)
REPO = Path(__file__).resolve().parents[1]


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


def refusals(err: str) -> list[str]:
    """The error lines of a run made inside another in this process (whose progress bar shares
    stderr, so that the line may follow the bar's text)."""
    return re.findall(r"hodor-run: error: [^\r\n]*", err)


def hidden(out: Path) -> list[str]:
    """Hidden entries of OUT: staging directories, set-aside copies, temporary files (a run
    writes none there that it keeps)."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


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
    real_run = segment.run_pipeline

    def spy(session, frames, masks, *args, **kwargs):
        given[str(frames.path.name)] = {
            t: sorted(int(i) for i in np.unique(m) if i) for t, m in masks.items()
        }
        return real_run(session, frames, masks, *args, **kwargs)

    monkeypatch.setattr(segment, "run_pipeline", spy)
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
    (out / f".{names[1]}.staging-1-abc0").mkdir()  # the unlocked staging of a dead writer
    (out / f".{names[1]}.staging-1-abc0" / "00000.png").write_bytes(b"half")
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / names[2]).iterdir()}

    code, stdout, err = run([root, "--model", model["path"], "--out", out, "--resume"], capsys)
    assert code == 0, err
    rows = summary_rows(out)
    assert [rows[n]["status"] for n in names] == ["ok", "ok", "skipped"]
    assert rows[names[2]]["frames"] == "5" and rows[names[2]]["objects"] == "2"
    assert {p.name: p.stat().st_mtime_ns for p in (out / names[2]).iterdir()} == done_before
    assert pngs(out / names[0]) == pngs(out / names[1]) == [f"{t:05d}.png" for t in range(5)]
    assert hidden(out) == []  # no staging left
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
    assert hidden(out) == []  # the interrupted sequence's staging was removed
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


# --------------------------------------------------------------------------- one run per output directory


def test_a_second_dataset_run_into_the_same_output_is_refused(tmp_path, davis, model, capsys, monkeypatch):
    root, names = davis
    out = tmp_path / "out"
    second: list[int | None] = []
    real_write = segment.write_mask

    def start_a_second_run(path, ids, palette):
        if not second:  # while the first run writes its first mask
            second.append(None)
            second[0] = cli.main([str(root), "--model", str(model["path"]), "--out", str(out), "--resume"])
        real_write(path, ids, palette)

    monkeypatch.setattr(segment, "write_mask", start_a_second_run)
    code, stdout, err = run([root, "--model", model["path"], "--out", out], capsys)
    assert code == 0, err
    assert second == [2], err
    lines = refusals(err)
    assert len(lines) == 1
    assert f"{out} is being written by another run (hodor-run DAVIS, pid {os.getpid()})" in lines[0]
    assert model["count"] == 1  # refused before loading the model
    assert [r["status"] for r in summary_rows(out).values()] == ["ok", "ok", "ok"]  # the first run unharmed
    assert "3 done" in stdout and hidden(out) == [] and not (tmp_path / ".out.lock").exists()


@pytest.fixture
def one_video(tmp_path, davis, monkeypatch) -> list:
    """hodor-run's one-video mode on the fake backend; records the loads."""
    loads: list = []

    def open_fake(model_path, backend, device, overrides: ConfigOverrides, torch_options=None):
        loads.append(model_path)
        return FakeBackend(config=overrides.apply(small_config(min_dim=64, max_dim=128)))

    monkeypatch.setattr(cli, "open_backend", open_fake)
    return loads


def test_a_dataset_run_and_a_one_video_run_into_one_output_refuse_each_other(
    tmp_path, davis, model, one_video, capsys, monkeypatch
):
    root, names = davis
    out = tmp_path / "out"
    video = [
        root / "JPEGImages" / "480p" / names[0],
        "--masks",
        root / "Annotations" / "480p" / names[0] / "00000.png",
        "--model",
        model["path"],
        "--out",
        out,
    ]
    dataset = [root, "--model", model["path"], "--out", out]
    nested: list[int | None] = []

    # A dataset run while a one-video run holds OUT (the one-video run loads its model under its claim).
    real_open = cli.open_backend

    def dataset_run_meanwhile(*a, **k):
        if not nested:
            nested.append(None)
            nested[0] = cli.main([str(x) for x in dataset])
        return real_open(*a, **k)

    monkeypatch.setattr(cli, "open_backend", dataset_run_meanwhile)
    code, _, err = run(video, capsys)
    assert code == 0 and nested == [2], err
    lines = refusals(err)
    assert len(lines) == 1
    assert f"{out} is being written by another run (hodor-run, pid {os.getpid()})" in lines[0]
    assert model["count"] == 0  # the dataset run loaded no model
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4"]  # the one video's output only
    monkeypatch.setattr(cli, "open_backend", real_open)

    # A one-video run while a dataset run holds OUT.
    other = tmp_path / "other"
    video[-1] = other
    dataset[-1] = other
    real_write = segment.write_mask
    nested.clear()

    def one_video_run_meanwhile(path, ids, palette):
        if not nested:
            nested.append(None)
            nested[0] = cli.main([str(x) for x in video])
        real_write(path, ids, palette)

    monkeypatch.setattr(segment, "write_mask", one_video_run_meanwhile)
    code, _, err = run(dataset, capsys)
    assert code == 0 and nested == [2], err
    lines = refusals(err)
    assert len(lines) == 1 and f"{other} is being written by another run (hodor-run DAVIS, pid" in lines[0]
    assert sorted(p.name for p in other.iterdir()) == sorted([*names, "summary.csv", "summary.json"])


# --------------------------------------------------------------------------- killed processes

KILLED_MID_SEQUENCE = """
import os, signal, sys, threading, time
from pathlib import Path
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.datasets import segment, worker
from tests.engine_fake_backend import FakeBackend, small_config

def open_fake(model_path, backend, device, overrides, torch_options=None):
    return FakeBackend(config=overrides.apply(small_config(min_dim=64, max_dim=128)))

worker.open_backend = open_fake
real_write = segment.write_mask
written, done, lock = [], [], threading.Lock()

def write_then_die(path, ids, palette):
    # Masks are written by several threads: the writes before the fatal one finish first, and
    # none after it starts, so that exactly the masks before it are on disk.
    with lock:
        written.append(path)
        number = len(written)
    if number > int(sys.argv[1]):
        time.sleep(600)
    if number == int(sys.argv[1]):  # killed outright: no clean-up of any kind
        while len(done) < number - 1:
            time.sleep(0.01)
        print(path.parent, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, ids, palette)
    done.append(path)

segment.write_mask = write_then_die
if sys.argv[2] == "hodor-run":
    from hodor.engine import cli
    cli.main(sys.argv[3:])
else:  # one sequence, as a Ray worker runs it: no lock of the run's own
    from hodor.engine.datasets.davis import davis_sequences
    from hodor.engine.loop.session import VideoSession
    root, name, out = sys.argv[3:]
    spec = davis_sequences(Path(root), None, [name])[0]
    session = VideoSession(open_fake(None, None, None, ConfigOverrides()))
    worker.run_one(session, spec, Path(out), attempt=1)
"""


def killed_mid_sequence(masks_before_kill: int, *args) -> Path:
    """Run ``KILLED_MID_SEQUENCE`` in a process that SIGKILLs itself as it is about to write
    mask number ``masks_before_kill``; return the staging directory it was writing."""
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_MID_SEQUENCE, str(masks_before_kill), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=REPO,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    staging = Path(proc.stdout.strip().splitlines()[-1])
    assert staging.is_dir() and ".staging-" in staging.name
    return staging


def test_resume_after_a_run_killed_mid_sequence(tmp_path, davis, model, capsys):
    root, names = davis
    out = tmp_path / "out"
    staging = killed_mid_sequence(8, "hodor-run", root, "--model", model["path"], "--out", out)
    assert staging.parent == out and staging.name.startswith(f".{names[1]}.staging-")
    assert len(pngs(staging)) == 2  # the third mask of the second sequence was never written
    assert finished_record(out, names[0]) is not None
    assert not (out / names[1]).exists() and not (out / names[2]).exists()
    assert (tmp_path / ".out.lock").exists()  # the killed run released nothing; the kernel dropped its lock
    # A writer still alive (a worker of the killed run, say): its staging is not the run's to delete.
    live = StagedDir(out / names[2])
    try:
        code, stdout, err = run([root, "--model", model["path"], "--out", out, "--resume"], capsys)
        assert code == 0, err
        assert live.path.is_dir()
    finally:
        live.discard()
    rows = summary_rows(out)
    assert [rows[n]["status"] for n in names] == ["skipped", "ok", "ok"]
    assert rows[names[0]]["frames"] == "5" and rows[names[0]]["objects"] == "2"
    assert pngs(out / names[1]) == [f"{t:05d}.png" for t in range(5)]
    assert not staging.exists() and hidden(out) == [] and not (tmp_path / ".out.lock").exists()
    assert "2 done, 1 skipped (done earlier), 0 failed" in stdout


def test_a_worker_killed_mid_sequence_and_the_retry_on_another(tmp_path, davis, model):
    """As on Ray: the driver holds OUT; a worker (a process of its own, taking no lock) dies in the
    middle of a sequence; another worker redoes it beside the dead one's staging; the run's
    claim removes that staging when the run ends."""
    root, names = davis
    out = tmp_path / "out"
    spec = davis_sequences(root, None, [names[1]])[0]
    with claim_output_entries(out, "hodor-run DAVIS") as claim:
        dead = killed_mid_sequence(3, "worker", root, names[1], out)
        assert dead.parent == out and len(pngs(dead)) == 2 and not (out / names[1]).exists()
        session = VideoSession(worker.open_backend(model["path"], "auto", "cpu", ConfigOverrides()))
        result = worker.run_one(session, spec, out, attempt=2)
        assert result.status == OK and result.frames == 5 and result.attempts == 2
        assert dead.is_dir() and claim.held  # left alone while the run goes on
    record = finished_record(out, names[1])
    assert record is not None and record.stems == tuple(f"{t:05d}" for t in range(5))
    assert not dead.exists() and sorted(p.name for p in out.iterdir()) == [names[1]]


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


def test_dataset_argument_errors_are_one_line(tmp_path, davis, capsys):
    """As in the one-video mode: ``PROG: error: ...`` on one line, exit status 2, no usage dump."""
    root, _ = davis
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(root), "--ray-workers", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "hodor-run: error: argument --ray-workers: expected a positive integer, got 0 (see hodor-run --help)"
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(root), "--resume", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


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
