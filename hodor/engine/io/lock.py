"""Exclusive locks on output paths, so that two runs never write one output at once.

Locks are ``flock(2)`` locks (POSIX systems): the kernel drops them when their holder exits,
however it exits, so a lock left behind by a killed run is never mistaken for a live one.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from hodor.errors import HodorError

LOCK_SUFFIX = ".lock"


class OutputBusyError(HodorError):
    """Another live run holds the output path."""


def try_lock(fd: int) -> bool:
    """Take the exclusive lock of the open file (or directory) ``fd`` without waiting; False if held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def real_target(target: str | Path) -> Path:
    """``target`` as an absolute path; if it is a symbolic link, the path it points to (outputs
    replace the directory a link points to, and two names for one directory share one lock)."""
    target = Path(target).absolute()
    return target.resolve() if target.is_symlink() else target


def lock_path(target: Path) -> Path:
    """``DIR/.NAME.lock`` for the output ``DIR/NAME``: beside it, as the output itself is swapped."""
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


class OutputLock:
    """One run's exclusive claim on the output path ``target``, held from ``acquire`` to ``release``
    (or over a ``with`` block).

    A second claim on the same path, from any process, is refused with :class:`OutputBusyError`
    naming the holder. Parent directories of ``target`` that do not exist are created, and removed
    again on release if they are still empty and ``target`` was never made, so a refused or failed
    run leaves no empty directories behind. The lock file is removed on release.
    """

    def __init__(self, target: str | Path, holder: str = "hodor") -> None:
        self.target = real_target(target)
        self.path = lock_path(self.target)
        self.holder = holder
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self
        self._make_parents()
        try:
            self._fd = self._take()
        except BaseException:
            self._remove_created_parents()
            raise
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked while still held: a run that opened the old file meanwhile notices (see _take).
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
            self._remove_created_parents()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ internals

    def _take(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise HodorError(
                    f"cannot write to output directory {self.target.parent}: {exc.strerror or exc}"
                ) from None
            try:
                if not try_lock(fd):
                    raise OutputBusyError(
                        f"{self.target} is being written by another run ({_holder_of(fd)}); "
                        "wait for it to finish or choose another output directory"
                    )
                # The previous holder may have unlinked the file between our open and our lock:
                # then we hold a lock nobody else can see, and must take the file now at the path.
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                mine = os.fstat(fd)
                if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{self.holder}, pid {os.getpid()}\n".encode())
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _make_parents(self) -> None:
        missing = []
        parent = self.target.parent
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                if not directory.is_dir():
                    self._remove_created_parents()
                    raise HodorError(f"cannot write to {self.target}: {directory} is a file") from None
                continue
            except OSError as exc:
                self._remove_created_parents()
                raise HodorError(f"cannot write to {self.target}: {exc.strerror or exc}") from None
            self._created.append(directory)

    def _remove_created_parents(self) -> None:
        if self.target.exists():
            self._created.clear()
            return
        for directory in reversed(self._created):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (someone else wrote there): keep it and everything above
        self._created.clear()


def _holder_of(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
