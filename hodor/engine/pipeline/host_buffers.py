"""Page-locked (pinned) host buffers, recycled, for asynchronous copies to and from a CUDA device.

A copy between the device and pinned memory can run while the host goes on; from ordinary
memory it cannot. Allocating pinned memory is slow, so each pool allocates its buffers once
and hands them round. A buffer goes back to its pool with the CUDA event after which the
device no longer reads or writes it; whoever takes it next waits for that event first (in
the taking thread: the decoder, never the device stage). The pool's size bounds how many
frames are in flight at its point of the pipeline.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from hodor.engine.pipeline.control import Stop


@dataclass(eq=False)
class HostBuffer:
    """One pinned buffer: ``tensor`` (CPU, pinned) and ``array``, a numpy view of the same memory."""

    tensor: torch.Tensor
    array: np.ndarray
    pool: HostBufferPool
    busy_until: torch.cuda.Event | None = None

    def release(self, busy_until: torch.cuda.Event | None = None) -> None:
        """Give the buffer back; ``busy_until``: the event after which the device is done with it."""
        self.busy_until = busy_until
        self.pool._give_back(self)


class HostBufferPool:
    """``count`` pinned uint8 buffers of ``shape``; :meth:`acquire` waits for a free one."""

    def __init__(self, count: int, shape: tuple[int, ...], stop: Stop) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.shape = tuple(shape)
        self._stop = stop
        self._cond = threading.Condition()
        self._free: deque[HostBuffer] = deque()
        for _ in range(count):
            tensor = torch.empty(self.shape, dtype=torch.uint8, pin_memory=True)
            self._free.append(HostBuffer(tensor, tensor.numpy(), self))
        self.count = count
        stop.on_stop(self._wake)

    def acquire(self) -> HostBuffer:
        """A free buffer the device is done with; raises ``Aborted`` if the run is aborted meanwhile."""
        with self._cond:
            while not self._free:
                self._stop.check()
                self._cond.wait()
            self._stop.check()
            buffer = self._free.popleft()
        if buffer.busy_until is not None:
            buffer.busy_until.synchronize()  # normally long past: the copy was queued frames ago
            buffer.busy_until = None
        return buffer

    def _give_back(self, buffer: HostBuffer) -> None:
        with self._cond:
            self._free.append(buffer)
            self._cond.notify()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class HostCopy:
    """A result on its way to the host: ``array`` holds it once :meth:`wait` returns.

    On CUDA, ``array`` is a pinned buffer being filled by an asynchronous copy that ends at
    ``ready``; waiting for that event is the one place a frame's result makes the host wait for
    the device. On the CPU the result is already there.
    """

    def __init__(
        self, array: np.ndarray, ready: torch.cuda.Event | None = None, buffer: HostBuffer | None = None
    ) -> None:
        self.array = array
        self._ready = ready
        self._buffer = buffer

    def wait(self) -> np.ndarray:
        if self._ready is not None:
            self._ready.synchronize()
            self._ready = None
        return self.array

    def release(self) -> None:
        """The caller is done with :attr:`array` (a pinned buffer goes back to its pool)."""
        if self._buffer is not None:
            self._buffer.release()
            self._buffer = None
