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
``hodor-export``), or one entry inside one (a dataset run: ``OUT/<sequence>``, where a
sequence is done exactly when ``OUT/<sequence>`` exists). Pair it with
:class:`hodor.engine.io.lock.OutputLock` when no other run may write the same target.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from hodor.engine.io.files import atomic_write
from hodor.engine.io.lock import OutputLock, real_target, try_lock
from hodor.errors import HodorError

INCOMPLETE_NAME = "INCOMPLETE.json"
"""Written into a committed directory whose input ended before all its frames were processed."""

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
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.path = target.parent / f".{target.name}.staging-{token}"
        self._aside = target.parent / f".{target.name}.old-{token}"
        self._fd: int | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self._remove()
            raise HodorError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
        if not try_lock(self._fd):  # a fresh, uniquely named directory: nobody else can hold it
            self._remove()
            raise RuntimeError(f"{self.path} was locked by someone else as it was made")

    @property
    def open(self) -> bool:
        """True until committed or discarded."""
        return self._fd is not None

    def commit(
        self,
        *,
        incomplete: Incomplete | None = None,
        keep: Callable[[str], bool] | None = None,
    ) -> Path:
        """Put the staged contents in place of ``target`` and return ``target``.

        ``incomplete`` writes the :data:`INCOMPLETE_NAME` marker into it first. ``keep(name)``
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
