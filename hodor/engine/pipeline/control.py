"""How the pipeline's threads stop together: one :class:`Stop` per run, and bounded
:class:`Channel` queues whose blocking calls give up as soon as the run is aborted.

Two ways to stop:

- **abort** (an error anywhere, or Ctrl-C on a file input): every blocking call raises
  :class:`Aborted`; each thread finishes what it is doing (a model call, a file write) and
  leaves. The first error is kept and re-raised to the caller.
- **close the intake** (Ctrl-C on a live source): the decoder stops reading and the device
  stage takes no further frame; what was already handed to the writers is written, so the
  run ends with every written file whole.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Aborted(Exception):
    """Raised inside the pipeline's threads once the run is aborted; never leaves the pipeline."""


class _End:
    """The marker a closed, drained :class:`Channel` hands to every reader."""

    def __repr__(self) -> str:
        return "END"


END = _End()


class Stop:
    """The shared stop state of one pipeline run."""

    def __init__(self) -> None:
        # Reentrant: a SIGINT handler may call abort() in a thread that is inside abort() already.
        self._lock = threading.RLock()
        self._aborted = threading.Event()
        self._intake_closed = threading.Event()
        self._error: BaseException | None = None
        self._wakers: list[Callable[[], None]] = []

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    @property
    def intake_closed(self) -> bool:
        return self._intake_closed.is_set() or self._aborted.is_set()

    @property
    def error(self) -> BaseException | None:
        """The first error (or interrupt) that aborted the run, if any."""
        return self._error

    def abort(self, error: BaseException) -> None:
        """Stop every stage; ``error`` is re-raised to the caller unless an earlier one was kept."""
        with self._lock:
            if self._error is None:
                self._error = error
            self._aborted.set()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def close_intake(self) -> None:
        """Read no further frame; let what is in flight after the device stage be written."""
        with self._lock:
            self._intake_closed.set()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def check(self) -> None:
        """Raise :class:`Aborted` if the run was aborted."""
        if self._aborted.is_set():
            raise Aborted

    def on_stop(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever the run is aborted or its intake closed (to release waiters)."""
        with self._lock:
            self._wakers.append(wake)


class Channel(Generic[T]):
    """A bounded FIFO between stages: ``put`` waits while it holds ``capacity`` items, ``get``
    while it is empty; both raise :class:`Aborted` once the run is aborted. After :meth:`close`,
    readers drain what is left and then get :data:`END` (every reader, every time).

    An ``intake`` channel (decoded frames) also ends when the run's intake is closed: ``get``
    returns :data:`END` at once, dropping frames not yet taken, and ``put`` raises
    :class:`Aborted` so that the decoder leaves.

    ``high_water`` is the most items it ever held (tests check the bounds with it).
    """

    def __init__(self, capacity: int, stop: Stop, name: str = "channel", intake: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.name = name
        self.high_water = 0
        self._stop = stop
        self._items: deque[T] = deque()
        self._closed = False
        self._intake = intake
        self._cond = threading.Condition()
        stop.on_stop(self._wake)

    def put(self, item: T) -> None:
        with self._cond:
            while len(self._items) >= self.capacity:
                self._check_put()
                self._cond.wait()
            self._check_put()
            if self._closed:
                raise RuntimeError(f"{self.name}: put after close")
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()

    def get(self) -> T | _End:
        with self._cond:
            while not self._items and not self._closed:
                self._stop.check()
                if self._intake and self._stop.intake_closed:
                    return END
                self._cond.wait()
            self._stop.check()
            if not self._items or (self._intake and self._stop.intake_closed):
                return END
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more items: readers get :data:`END` once the channel is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _check_put(self) -> None:
        self._stop.check()
        if self._intake and self._stop.intake_closed:
            raise Aborted

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
