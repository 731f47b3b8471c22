"""How outputs are written: staged directories swapped in whole, the output lock, and the
clean-up of what killed runs leave behind; used whole (one video) and per unit (a dataset's
sequences), from writer threads, and by a stream that ends on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hodor.engine.io import (
    INCOMPLETE_NAME,
    Incomplete,
    OutputBusyError,
    OutputLock,
    StagedDir,
    claim_output,
    default_palette,
    foreign_entries,
    read_incomplete,
    remove_stale,
    write_mask,
)
from hodor.errors import HodorError

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def filled(target: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    return target


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


KILLED_WHILE_STAGING = """
import os, signal, sys
from hodor.engine.io import StagedDir
staged = StagedDir(sys.argv[1])
(staged.path / "half.png").write_bytes(b"half written")
print(staged.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_staging(target: Path) -> Path:
    """The staging directory of a process killed (SIGKILL, no clean-up) while writing ``target``."""
    proc = run_python(KILLED_WHILE_STAGING, str(target))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftover = Path(proc.stdout.strip())
    assert leftover.is_dir() and leftover.parent == target.parent
    return leftover


# --------------------------------------------------------------------------- whole directories


def test_commit_replaces_the_previous_contents_whole(tmp_path):
    out = filled(tmp_path / "out", {"masks/00000.png": b"old0", "masks/00001.png": b"old1", "x.mp4": b"o"})
    with StagedDir(out) as staged:
        filled(staged.path, {"masks/00000.png": b"new0"})
        assert tree(out)["masks/00000.png"] == b"old0"  # nothing visible before the commit
        assert staged.commit() == out
    assert tree(out) == {"masks/00000.png": b"new0"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no set-aside copy


def test_commit_creates_a_missing_target_and_its_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with StagedDir(out) as staged:
        filled(staged.path, {"f.txt": b"1"})
        staged.commit()
    assert tree(out) == {"f.txt": b"1"} and sorted(p.name for p in out.parent.iterdir()) == ["out"]


@pytest.mark.parametrize("failure", [RuntimeError("a bug"), HodorError("bad input"), KeyboardInterrupt()])
def test_a_run_that_does_not_commit_leaves_the_previous_output_untouched(tmp_path, failure):
    out = filled(tmp_path / "out", {"masks/00000.png": b"old"})
    before = tree(out)
    with pytest.raises(type(failure)), StagedDir(out) as staged:
        filled(staged.path, {"masks/00000.png": b"new", "masks/00001.png": b"new"})
        raise failure
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not staged.open


def test_leaving_the_block_without_commit_discards(tmp_path):
    with StagedDir(tmp_path / "out") as staged:
        filled(staged.path, {"f": b"x"})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="already"):
        staged.commit()


def test_incomplete_marker(tmp_path):
    marker = Incomplete(frames_written=20, frames_expected=40, reason="clip.mp4 ends early")
    with StagedDir(tmp_path / "short") as staged:
        staged.commit(incomplete=marker)
    with StagedDir(tmp_path / "whole") as staged:
        staged.commit()
    assert (tmp_path / "short" / INCOMPLETE_NAME).is_file()
    assert read_incomplete(tmp_path / "short") == marker
    assert marker.describe() == "20 of 40 frames: clip.mp4 ends early"
    assert read_incomplete(tmp_path / "whole") is None


def test_keep_carries_chosen_entries_of_the_previous_target_over(tmp_path):
    out = filled(tmp_path / "m.hodor", {"a.onnx": b"old", "cache/engine": b"c", "notes.txt": b"n"})
    with StagedDir(out) as staged:
        filled(staged.path, {"a.onnx": b"new", "notes.txt": b"from the new export"})
        staged.commit(keep=lambda name: name != "a.onnx")
    # cache/ is carried over; notes.txt is one the new contents have, and the new one wins.
    assert tree(out) == {"a.onnx": b"new", "cache/engine": b"c", "notes.txt": b"from the new export"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.hodor"]


def test_a_commit_that_fails_to_put_its_contents_in_place_undoes_itself(tmp_path, monkeypatch):
    from hodor.engine.io import staging

    out = filled(tmp_path / "out", {"keep/cache": b"c", "masks/a.png": b"previous"})
    before = tree(out)
    staged = StagedDir(out)
    filled(staged.path, {"masks/a.png": b"new"})
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == staged.path:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(staging.os, "rename", rename)
    with pytest.raises(HodorError, match="cannot put .*out in place: No space left on device"):
        staged.commit(keep=lambda name: name == "keep")
    monkeypatch.undo()
    assert tree(out) == before  # the previous contents, carried-over entries included, are back
    staged.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_while_the_previous_contents_are_deleted_does_not_undo_the_commit(tmp_path, monkeypatch):
    from hodor.engine.io import staging

    out = filled(tmp_path / "out", {"masks/a.png": b"previous"})
    staged = StagedDir(out)
    filled(staged.path, {"masks/a.png": b"new"})

    def interrupted_rmtree(path, ignore_errors=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(staging.shutil, "rmtree", interrupted_rmtree)
    assert staged.commit() == out and not staged.open
    monkeypatch.undo()
    assert tree(out) == {"masks/a.png": b"new"}
    remove_stale(tmp_path, "out")  # the next claim deletes what was left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_in_the_way_is_an_error(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(HodorError, match="existing file"):
        StagedDir(tmp_path / "out")


def test_foreign_entries(tmp_path):
    out = filled(tmp_path / "out", {"masks/a.png": b"", "thesis.tex": b""})
    assert foreign_entries(out, lambda name: name == "masks") == ["thesis.tex"]
    assert foreign_entries(tmp_path / "missing", lambda name: False) == []


# --------------------------------------------------------------------------- the lock


def test_a_second_claim_is_refused_until_the_first_is_released(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out, holder="hodor-run") as first:
        assert first.held and first.path == tmp_path / ".out.lock"
        with pytest.raises(
            OutputBusyError, match=rf"being written by another run \(hodor-run, pid {os.getpid()}\)"
        ):
            OutputLock(out).acquire()
    assert list(tmp_path.iterdir()) == []  # the lock file goes with the lock
    with OutputLock(out):
        pass


def test_a_claim_held_by_another_process_is_refused(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from hodor.engine.io import OutputLock; lock = OutputLock(sys.argv[1], 'other-run')"
            ".acquire(); print('held', flush=True); sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=rf"other-run, pid {holder.pid}"):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    # Killed without releasing: the kernel dropped its lock, and its lock file is taken over.
    with OutputLock(out) as lock:
        assert lock.held


def test_a_released_claim_removes_the_directories_it_created_for_nothing(tmp_path):
    with OutputLock(tmp_path / "a" / "b" / "out"):
        assert (tmp_path / "a" / "b").is_dir()
    assert list(tmp_path.iterdir()) == []
    with OutputLock(tmp_path / "a" / "b" / "out"), StagedDir(tmp_path / "a" / "b" / "out") as staged:
        staged.commit()
    assert (tmp_path / "a" / "b" / "out").is_dir()  # used: kept


def test_a_parent_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HodorError, match="cannot write"):
        OutputLock(tmp_path / "file" / "out").acquire()


# --------------------------------------------------------------------------- what killed runs leave


def test_staging_of_a_killed_run_is_removed_and_a_live_one_kept(tmp_path):
    out = filled(tmp_path / "out", {"masks/a.png": b"previous"})
    dead = killed_staging(out)
    live = StagedDir(out)
    try:
        assert remove_stale(tmp_path, "out") == [dead]
        assert not dead.exists() and live.path.is_dir() and tree(out) == {"masks/a.png": b"previous"}
    finally:
        live.discard()


def test_claim_output_cleans_up_only_its_own_target(tmp_path):
    mine, other = tmp_path / "out", tmp_path / "other"
    dead_mine, dead_other = killed_staging(mine), killed_staging(other)
    with claim_output(mine, "test"):
        assert not dead_mine.exists() and dead_other.exists()


def test_a_commit_killed_between_its_renames_is_undone(tmp_path):
    """Killed after moving the previous output aside, before moving its own in: the previous
    output is put back and the unfinished one deleted."""
    out = filled(tmp_path / "out", {"masks/a.png": b"previous"})
    dead = killed_staging(out)
    token = dead.name.split(".staging-")[1]
    os.rename(out, tmp_path / f".out.old-{token}")
    remove_stale(tmp_path, "out")
    assert tree(out) == {"masks/a.png": b"previous"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_commit_killed_after_its_renames_is_finished(tmp_path):
    """Killed after moving its own output in, before deleting the previous one."""
    filled(tmp_path / ".out.old-123-abcd0123", {"masks/a.png": b"previous"})
    filled(tmp_path / "out", {"masks/a.png": b"new"})
    remove_stale(tmp_path, "out")
    assert tree(tmp_path) == {"out/masks/a.png": b"new"}


# --------------------------------------------------------------------------- units, threads, streams


def sequence_masks(n: int) -> dict[str, bytes]:
    return {f"{t:05d}.png": f"mask {t}".encode() for t in range(n)}


def test_units_of_a_dataset_run_commit_one_by_one_and_resume(tmp_path):
    """``OUT/<seq>`` staged per sequence: a sequence exists exactly when all its masks were
    written; a resumed run skips those and redoes the one a killed worker left half done."""
    out = tmp_path / "results"
    lengths = {"bear": 3, "cows": 4, "dogs": 2}

    def write_sequence(seq: str) -> None:
        with StagedDir(out / seq) as staged:
            filled(staged.path, sequence_masks(lengths[seq]))
            staged.commit()

    with claim_output(out, "dataset run"):
        write_sequence("bear")
        half = killed_staging(out / "cows")  # a worker killed in the middle of "cows"
    assert half.parent == out and sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "bear"
    ]

    with claim_output(out, "dataset run --resume"):
        removed = remove_stale(out)  # every sequence's leftovers inside OUT
        done = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
        assert removed == [half] and done == {"bear"}
        for seq in sorted(set(lengths) - done):
            write_sequence(seq)
    assert tree(out) == {
        f"{s}/{name}": data for s, n in lengths.items() for name, data in sequence_masks(n).items()
    }


def test_masks_written_from_several_threads_are_all_committed_whole(tmp_path):
    ids = np.zeros((40, 60), np.uint8)
    ids[5:30, 10:50] = 3
    with StagedDir(tmp_path / "out") as staged:
        (staged.path / "masks").mkdir()

        def writer(first: int) -> None:
            for t in range(first, 64, 4):
                write_mask(staged.path / "masks" / f"{t:05d}.png", ids, default_palette())

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        staged.commit()
    names = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert names == [f"{t:05d}.png" for t in range(64)]  # no temporary names among them
    for name in names:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / name)), ids)


def test_a_stream_that_ends_on_ctrl_c_commits_what_it_wrote(tmp_path):
    """A live source has no end but Ctrl-C: the caller catches it and commits."""

    def camera():
        for t in range(1000):
            if t == 5:
                raise KeyboardInterrupt
            yield t

    out = filled(tmp_path / "live", {"masks/00999.png": b"an earlier stream"})
    with StagedDir(out) as staged:
        (staged.path / "masks").mkdir()
        try:
            for t in camera():
                (staged.path / "masks" / f"{t:05d}.png").write_bytes(b"mask")
        except KeyboardInterrupt:
            pass
        staged.commit()
    assert sorted(tree(out)) == [f"masks/{t:05d}.png" for t in range(5)]
