"""Directories written in private and swapped in whole, so that an output directory only ever
holds one finished run's files.

A :class:`StagedDir` for the target ``DIR/NAME`` is the hidden directory
``DIR/.NAME.staging-<pid>-<random>``. Writers (any number of threads, or processes given its
path) fill it; :meth:`StagedDir.commit` swaps it in place of ``DIR/NAME`` (two renames: the
previous ``NAME`` aside as ``.NAME.old-<same suffix>``, the staging directory in, then the
previous one deleted); :meth:`StagedDir.discard` (or leaving its ``with`` block without a
commit, on an error or Ctrl-C) deletes it and leaves ``NAME`` as it was.

While it exists a staging directory is locked (``flock`` on the directory) by the process that
writes it, so :func:`remove_stale` can tell what killed runs left behind (no lock held) from
what a live run is writing, and settle a commit that was killed between its two renames.

The unit of staging is up to the caller: a whole output directory (``hodor-run``,
``hodor-export``, claimed by :func:`claim_output`), or one entry inside one (a dataset run
stages ``OUT/<sequence>`` one by one, from any number of processes, while the run holds
``OUT`` through :func:`claim_output_entries`). A commit may leave a :class:`CommitRecord` in
the committed directory (``commit(record=...)``), by which :func:`committed_record` tells a
directory that a commit put in place, and that still holds every file it had, from one that
merely exists.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

from hodor.engine.io.files import atomic_write, is_temporary
from hodor.engine.io.lock import OutputLock, real_target, try_lock
from hodor.errors import HodorError

INCOMPLETE_NAME = "INCOMPLETE.json"
"""Written into a committed directory whose input ended before all its frames were processed."""

COMMIT_RECORD_NAME = ".hodor-commit.json"
"""Written last into a directory committed with ``commit(record=...)``: see :class:`CommitRecord`."""

_MAKE_ATTEMPTS = 8  # fresh names tried when a clean-up removed a new staging directory before its lock
_LEFTOVER = re.compile(r"^\.(?P<target>.+)\.(?P<kind>staging|old)-(?P<token>\d+-[0-9a-f]+)$")


@dataclass(frozen=True)
class Incomplete:
    """What a directory committed from an input that ended early holds: ``frames_written`` of
    ``frames_expected`` frames (None for a live stream, which declares no length), and why
    (one sentence)."""

    frames_written: int
    frames_expected: int | None
    reason: str

    def describe(self) -> str:
        return f"{self.count()}: {self.reason}"

    def count(self) -> str:
        """``"87 of 200 frames"``, or ``"87 frames"`` when no length was declared."""
        if self.frames_expected is None:
            return f"{self.frames_written} frames"
        return f"{self.frames_written} of {self.frames_expected} frames"


def read_incomplete(directory: str | Path) -> Incomplete | None:
    """The :class:`Incomplete` marker of a committed directory, or None if it is complete."""
    path = Path(directory) / INCOMPLETE_NAME
    if not path.is_file():
        return None
    try:
        return Incomplete(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return Incomplete(0, 0, f"unreadable {INCOMPLETE_NAME}")


@dataclass(frozen=True)
class CommitRecord:
    """What a commit put in place: ``files``, every file it staged (path relative to the committed
    directory, ``/``-separated -> size in bytes; the record itself and entries carried over by
    ``keep`` excluded), and ``details``, JSON values the writer chose to record with them."""

    files: Mapping[str, int]
    details: Mapping[str, object]


def read_commit_record(directory: str | Path) -> CommitRecord | None:
    """The :class:`CommitRecord` of ``directory``, or None if it has none or an unreadable one."""
    try:
        data = json.loads((Path(directory) / COMMIT_RECORD_NAME).read_text())
        files = {str(name): int(size) for name, size in data["files"].items()}
        details = dict(data["details"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for name in files:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            return None  # not something a commit wrote
    return CommitRecord(files=files, details=details)


def committed_record(directory: str | Path) -> CommitRecord | None:
    """The :class:`CommitRecord` of ``directory`` if a commit with a record put it in place and it
    still holds every file the record lists, at its recorded size; None otherwise (no record,
    or a file since removed, truncated or replaced by one of another size)."""
    record = read_commit_record(directory)
    if record is None:
        return None
    for name, size in record.files.items():
        try:
            if os.stat(Path(directory) / name).st_size != size:
                return None
        except OSError:
            return None
    return record


def _staged_files(root: Path) -> dict[str, int]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(root).as_posix()] = path.stat().st_size
    return files


class StagedDir:
    """A private directory beside ``target`` whose contents replace ``target`` whole on commit.

    ``path`` is where to write. Not thread-safe itself: every writer must have finished before
    ``commit`` (or ``discard``) is called.
    """

    def __init__(self, target: str | Path) -> None:
        target = real_target(target)
        self.target = target
        if target.exists() and not target.is_dir():
            raise HodorError(f"{target} is an existing file, not a directory; choose another output")
        self._fd: int | None = None
        for _ in range(_MAKE_ATTEMPTS):
            token = f"{os.getpid()}-{secrets.token_hex(4)}"
            self.path = target.parent / f".{target.name}.staging-{token}"
            self._aside = target.parent / f".{target.name}.old-{token}"
            if self._make_locked():
                return
        raise HodorError(
            f"cannot write to {target.parent}: every staging directory made there was removed at once"
        )

    def _make_locked(self) -> bool:
        """Make ``path`` and lock it; False if a clean-up removed it before the lock was taken.

        A directory made but not yet locked looks abandoned to :func:`remove_stale` running in
        another process meanwhile (a dataset run's clean-up while other processes stage its
        entries), which may delete it: the directory locked must still be the one at ``path``.
        """
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            if self.target.parent.is_dir():
                self._unlock()
                return False  # removed between mkdir and open
            self._remove()
            raise HodorError(f"cannot write to {self.target.parent}: it was removed") from None
        except OSError as exc:
            self._remove()
            raise HodorError(f"cannot write to {self.target.parent}: {exc.strerror or exc}") from None
        if not try_lock(self._fd):  # a fresh, uniquely named directory: only a clean-up can hold it
            self._unlock()
            return False
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(self._fd)
        if current is None or (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
            self._unlock()
            return False
        return True

    @property
    def open(self) -> bool:
        """True until committed or discarded."""
        return self._fd is not None

    def commit(
        self,
        *,
        incomplete: Incomplete | None = None,
        keep: Callable[[str], bool] | None = None,
        record: Mapping[str, object] | None = None,
    ) -> Path:
        """Put the staged contents in place of ``target`` and return ``target``.

        ``incomplete`` writes the :data:`INCOMPLETE_NAME` marker into it first. ``record`` (JSON
        values; ``{}`` for none) writes a :class:`CommitRecord` of every staged file, last
        before the swap, for :func:`committed_record` to check the directory by. ``keep(name)``
        picks entries of the previous ``target`` to carry over into the new one (moved, not
        copied; an entry the staged contents also have is not carried). Everything else of
        the previous ``target`` is deleted; a Ctrl-C during that deletion stops it without
        undoing the commit (:func:`remove_stale` deletes the rest later).
        """
        if self._fd is None:
            raise RuntimeError(f"{self.path} was already committed or discarded")
        carried: list[str] = []
        try:
            if incomplete is not None:
                with atomic_write(self.path / INCOMPLETE_NAME) as tmp:
                    tmp.write_text(json.dumps(asdict(incomplete), indent=1) + "\n")
            if record is not None:
                files = _staged_files(self.path)
                files.pop(COMMIT_RECORD_NAME, None)
                document = {"files": files, "details": dict(record)}
                with atomic_write(self.path / COMMIT_RECORD_NAME) as tmp:
                    tmp.write_text(json.dumps(document, indent=1) + "\n")
            if self.target.is_dir():
                if keep is not None:
                    for entry in sorted(self.target.iterdir()):
                        if keep(entry.name) and not (self.path / entry.name).exists():
                            os.rename(entry, self.path / entry.name)
                            carried.append(entry.name)
                os.rename(self.target, self._aside)
            os.rename(self.path, self.target)
        except BaseException as exc:
            if self.path.exists():  # not in place: undo what was done, in reverse
                if not self.target.exists() and self._aside.exists():
                    os.rename(self._aside, self.target)
                for name in carried:
                    os.rename(self.path / name, self.target / name)
                if isinstance(exc, OSError):
                    raise HodorError(f"cannot put {self.target} in place: {exc.strerror or exc}") from None
                raise
            # Interrupted just after the last rename: the new contents are in place and stand.
        try:
            shutil.rmtree(self._aside, ignore_errors=True)
        except KeyboardInterrupt:
            pass  # the new contents stand; what is left of the old goes at the next clean-up
        finally:
            self._unlock()
        return self.target

    def discard(self) -> None:
        """Delete the staged contents; ``target`` stays as it was."""
        if self._fd is not None:
            self._remove()

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()  # anything not committed explicitly is not an output

    def _remove(self) -> None:
        try:
            shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextmanager
def claim_output(target: str | Path, holder: str) -> Iterator[OutputLock]:
    """Hold ``target``'s :class:`OutputLock` (another run's claim is refused) over the block, after
    cleaning up what killed runs into ``target`` left beside it."""
    with OutputLock(target, holder) as lock:
        remove_stale(lock.target.parent, lock.target.name)
        yield lock


@contextmanager
def claim_output_entries(target: str | Path, holder: str) -> Iterator[OutputLock]:
    """Hold ``target``'s :class:`OutputLock` over the block for a run that writes ``target`` entry
    by entry rather than whole: each entry a :class:`StagedDir` of ``target / name``, written by
    this process or by others that do not take the lock (workers of the run).

    What killed runs left is cleaned up on entry, beside ``target`` (as :func:`claim_output`)
    and inside it: every entry's abandoned staging, and temporary files at its top level (only
    the lock's holder writes there). On leaving, ``target``'s entries are cleaned up again,
    for the writers that died during the run. A staging directory a live writer holds is never
    touched. ``target`` itself is not made; the first commit (or the caller) makes it.
    """
    with claim_output(target, holder) as lock:
        _remove_stale_inside(lock.target)
        try:
            yield lock
        finally:
            _remove_stale_inside(lock.target)


def foreign_entries(target: str | Path, owned: Callable[[str], bool]) -> list[str]:
    """Names in the directory ``target`` that ``owned`` does not claim (empty if there is no such
    directory): replacing ``target`` whole would delete them."""
    target = Path(target)
    if not target.is_dir():
        return []
    return sorted(entry.name for entry in target.iterdir() if not owned(entry.name))


def remove_stale(directory: str | Path, target_name: str | None = None) -> list[Path]:
    """Clean up after runs that were killed while writing into ``directory``; return the leftovers
    dealt with.

    Considers the staging directories (and directories set aside by a commit) of the target
    ``target_name``, or of every target when None. A staging directory still locked belongs to
    a live run and is left alone; one whose lock is free is deleted. A previous target that a
    killed commit had set aside is put back if no new one took its place, else deleted.
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None or (target_name is not None and match["target"] != target_name):
            continue
        target = directory / match["target"]
        staging = directory / f".{match['target']}.staging-{match['token']}"
        aside = directory / f".{match['target']}.old-{match['token']}"
        if match["kind"] == "staging":
            if aside.exists():
                continue  # settled with its set-aside directory, below
            if _claim_abandoned(staging, lambda staging=staging: shutil.rmtree(staging, ignore_errors=True)):
                removed.append(staging)
        elif not staging.exists():
            # The commit got as far as renaming its staging directory in (or someone removed
            # it): the set-aside directory is the previous target, wanted only if none is there.
            _put_back_or_delete(aside, target)
            removed.append(aside)
        elif _claim_abandoned(staging, lambda aside=aside, target=target: _put_back_or_delete(aside, target)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.extend([aside, staging])
    return removed


def _remove_stale_inside(target: Path) -> None:
    remove_stale(target)
    try:
        entries = list(target.iterdir())
    except OSError:
        return
    for entry in entries:
        if is_temporary(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def _put_back_or_delete(aside: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        os.rename(aside, target)  # the killed commit never put its own in place
    except OSError:
        pass  # something took the name meanwhile; the set-aside copy stays for a later clean-up


def _claim_abandoned(staging: Path, action: Callable[[], None]) -> bool:
    """Run ``action`` holding ``staging``'s lock if no live process holds it; False otherwise."""
    try:
        fd = os.open(staging, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not try_lock(fd):
            return False
        action()
        return True
    finally:
        os.close(fd)
