"""What a dataset run needs to segment sequences: the model to open, once, and the loop settings.

:class:`SessionRequest` travels to Ray workers, so it holds only plain, picklable values.
"""

from __future__ import annotations

import socket
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.registry import open_backend
from hodor.engine.backends.torch_backend import TorchOptions
from hodor.engine.datasets.segment import segment_sequence
from hodor.engine.datasets.sequence import SequenceSpec
from hodor.engine.datasets.summary import FAILED, OK, SequenceResult
from hodor.engine.loop.session import DEFAULT_TEMPORAL_WINDOW, VideoSession
from hodor.errors import HodorError


@dataclass(frozen=True)
class SessionRequest:
    """``open_backend`` arguments and ``VideoSession`` settings (``hodor-run``'s model options)."""

    model: Path
    backend: str = "auto"
    device: str | None = None
    overrides: ConfigOverrides = field(default_factory=ConfigOverrides)
    torch_options: TorchOptions = field(default_factory=TorchOptions)
    temporal_window: int = DEFAULT_TEMPORAL_WINDOW
    chunk: int | None = None  # None: the device's default (VideoSession)

    def on_device(self, device: str | None) -> SessionRequest:
        return replace(self, device=device)

    def open_session(self) -> VideoSession:
        """Load the model (the expensive part) and wrap it in a session for any number of sequences."""
        backend = open_backend(self.model, self.backend, self.device, self.overrides, self.torch_options)
        return VideoSession(backend, temporal_window=self.temporal_window, chunk=self.chunk)


def worker_label() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def run_one(session: VideoSession, spec: SequenceSpec, out_root: Path, attempt: int = 1) -> SequenceResult:
    """Segment one sequence; a failure becomes a ``failed`` result, so that the others go on.

    A ``HodorError`` (a problem with the sequence's files) is reported by its message;
    anything else is a bug, reported with its type and its traceback on stderr.
    """
    try:
        record = segment_sequence(session, spec, out_root)
    except HodorError as exc:
        return SequenceResult(spec.name, FAILED, attempts=attempt, worker=worker_label(), error=one_line(exc))
    except Exception as exc:  # noqa: BLE001 - one broken sequence must not stop a dataset run
        traceback.print_exc(file=sys.stderr)
        message = f"{exc.__class__.__name__}: {one_line(exc)}"
        return SequenceResult(spec.name, FAILED, attempts=attempt, worker=worker_label(), error=message)
    return SequenceResult(
        spec.name,
        OK,
        frames=len(record.stems),
        objects=record.objects,
        seconds=record.seconds,
        attempts=attempt,
        worker=worker_label(),
    )
