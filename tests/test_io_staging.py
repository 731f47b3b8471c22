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
    COMMIT_RECORD_NAME,
    INCOMPLETE_NAME,
    Incomplete,
    OutputBusyError,
    OutputLock,
    StagedDir,
    claim_output,
    claim_output_entries,
    committed_record,
    default_palette,
    foreign_entries,
    read_commit_record,
    read_incomplete,
    remove_stale,
    write_mask,
)
from hodor.engine.io.files import atomic_write, is_temporary, temporary_beside
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


# --------------------------------------------------------------------------- commit records


def test_a_commit_record_lists_every_staged_file_and_the_writer_s_details(tmp_path):
    out = filled(tmp_path / "out", {"stale.png": b"from before"})
    short = Incomplete(frames_written=2, frames_expected=3, reason="ends early")
    with StagedDir(out) as staged:
        filled(staged.path, {"00000.png": b"mask0", "sub/00001.png": b"mask 1"})
        staged.commit(record={"sequence": "bear", "objects": 2}, incomplete=short)
    record = committed_record(out)
    assert record is not None and record == read_commit_record(out)
    assert record.files == {
        "00000.png": 5,
        "sub/00001.png": 6,
        INCOMPLETE_NAME: (out / INCOMPLETE_NAME).stat().st_size,
    }  # not the record itself, not what the previous directory held
    assert record.details == {"sequence": "bear", "objects": 2}
    listing = sorted(p.name for p in out.iterdir())
    assert listing == sorted([COMMIT_RECORD_NAME, INCOMPLETE_NAME, "00000.png", "sub"])


def test_a_directory_is_committed_only_while_it_holds_what_its_record_lists(tmp_path):
    with StagedDir(tmp_path / "out") as staged:
        filled(staged.path, {"a.png": b"aaaa", "b.png": b"bb"})
        staged.commit(record={})
    assert committed_record(tmp_path / "out") is not None
    (tmp_path / "out" / "b.png").write_bytes(b"b")  # cut short
    assert committed_record(tmp_path / "out") is None
    (tmp_path / "out" / "b.png").unlink()
    assert committed_record(tmp_path / "out") is None and read_commit_record(tmp_path / "out") is not None

    with StagedDir(tmp_path / "plain") as staged:  # committed without a record
        staged.commit()
    filled(tmp_path / "made-by-hand", {"a.png": b"aaaa"})
    (tmp_path / "forged").mkdir()
    (tmp_path / "forged" / COMMIT_RECORD_NAME).write_text('{"files": {"../out/a.png": 4}, "details": {}}')
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / COMMIT_RECORD_NAME).write_text('{"files": [1, 2]}')
    for name in ("plain", "made-by-hand", "forged", "garbled", "absent"):
        assert committed_record(tmp_path / name) is None, name


# --------------------------------------------------------------------------- a target written entry by entry


def test_claiming_a_target_entry_by_entry(tmp_path):
    """One claim on OUT for a run that stages OUT/<name> one by one: a second claim of either
    kind is refused; what killed writers left is cleaned up on entry and, for writers that
    died during the run, on leaving; a live writer's staging is never touched."""
    out = tmp_path / "results"
    dead_before = killed_staging(out / "bear")
    (out / "summary.csv").write_text("done")
    temporary = temporary_beside(out / "summary.csv")
    temporary.write_text("half")  # a killed run's unfinished file
    filled(out / "cows", {"a.png": b"new"})
    filled(out / ".cows.old-123-abcd0123", {"a.png": b"previous"})  # a commit cut after its renames
    beside = killed_staging(out)  # a killed one-video run into OUT

    with claim_output_entries(out, "dataset run") as claim:
        assert claim.held and claim.path == tmp_path / ".results.lock"
        assert not dead_before.exists() and not temporary.exists() and not beside.exists()
        assert tree(out) == {"summary.csv": b"done", "cows/a.png": b"new"}
        for second in (claim_output_entries, claim_output):
            with pytest.raises(OutputBusyError, match=rf"another run \(dataset run, pid {os.getpid()}\)"):
                with second(out, "another"):
                    pass
        live = StagedDir(out / "dogs")  # a worker still writing when the run ends
        dead_during = killed_staging(out / "emus")  # a worker that died during the run
        with StagedDir(out / "bear") as staged:
            filled(staged.path, {"a.png": b"bear"})
            staged.commit(record={})
    try:
        assert not dead_during.exists() and live.path.is_dir()
        assert committed_record(out / "bear") is not None
        assert not (tmp_path / ".results.lock").exists()
    finally:
        live.discard()
    assert sorted(p.name for p in out.iterdir()) == ["bear", "cows", "summary.csv"]


def test_claiming_entries_of_a_missing_target_makes_nothing_unless_written(tmp_path):
    with claim_output_entries(tmp_path / "a" / "out", "dataset run"):
        pass
    assert list(tmp_path.iterdir()) == []
    with claim_output_entries(tmp_path / "a" / "out", "dataset run"):
        with StagedDir(tmp_path / "a" / "out" / "seq") as staged:
            staged.commit()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]


def test_a_staging_directory_removed_by_a_clean_up_before_its_lock_is_made_again(tmp_path, monkeypatch):
    """Another process's clean-up may find a staging directory made but not yet locked, take it
    for abandoned and delete it: the writer notices and stages under a fresh name."""
    from hodor.engine.io import staging

    real_try_lock = staging.try_lock
    raced: list[Path] = []

    def clean_up_first(fd: int) -> bool:
        monkeypatch.setattr(staging, "try_lock", real_try_lock)
        raced.extend(remove_stale(tmp_path, "out"))  # between the writer's mkdir and its lock
        return real_try_lock(fd)

    monkeypatch.setattr(staging, "try_lock", clean_up_first)
    with StagedDir(tmp_path / "out") as staged:
        assert len(raced) == 1 and not raced[0].exists() and staged.path != raced[0]
        assert remove_stale(tmp_path, "out") == [] and staged.path.is_dir()  # locked this time
        filled(staged.path, {"a.png": b"a"})
        staged.commit()
    assert tree(tmp_path) == {"out/a.png": b"a"}


def test_temporary_names_are_recognised(tmp_path):
    path = tmp_path / "summary.csv"
    assert is_temporary(temporary_beside(path).name)
    with atomic_write(path) as tmp:
        assert is_temporary(tmp.name)
        tmp.write_text("x")
    for name in ("summary.csv", ".hidden.tmp", ".a.1.2.tmp", "a.1.2.3.tmp", ".out.staging-1-ab"):
        assert not is_temporary(name), name
