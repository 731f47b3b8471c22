"""A stage through ``torch.compile`` (Inductor), with a persistent cache and an eager fallback.

The torch backend can run its backbone this way (``hodor-run --backbone compile``):
Inductor fuses the Swin blocks' elementwise work and normalisations into generated
Triton (CUDA) or C++ (CPU) kernels. Compiling happens at the first call with each new
input shape (batch size, frame size) and takes from seconds to minutes, so:

- the compiled artefacts are cached on disk: Inductor's FX graph cache, in
  ``$XDG_CACHE_HOME/hodor-engine/inductor`` (``~/.cache/...``) unless
  ``TORCHINDUCTOR_CACHE_DIR`` is set, so later processes load instead of compiling;
- the time spent in those first calls is kept (:attr:`CompileStats.seconds`), for the
  run's summary line;
- if compiling (or running what was compiled) fails, one :class:`CompileWarning` says why
  and the stage runs eagerly from then on, with the same results.

The compiler is a parameter, so the fallback and the bookkeeping are tested with
stand-ins; a real Inductor compile on the CPU is a slow test.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import torch

StageFn = Callable[..., tuple[torch.Tensor, ...]]
Compiler = Callable[[StageFn], StageFn]
"""``fn -> compiled fn``; compiling may happen lazily, at the first call."""

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


class CompileWarning(RuntimeWarning):
    """Compiling a stage failed; it runs eagerly (slower, same results)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hodor-engine/inductor``, else ``~/.cache/hodor-engine/inductor``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "hodor-engine" / "inductor"


def cache_dir() -> Path:
    """Where Inductor's caches go: ``TORCHINDUCTOR_CACHE_DIR`` if the user set it, else
    :func:`default_cache_dir`."""
    given = os.environ.get(CACHE_ENV)
    # Inductor writes its own default (a temporary directory) into the variable when it first
    # looks: that one was not chosen by the user, and is not persistent.
    if given and given != _inductor_default_dir():
        return Path(given)
    return default_cache_dir()


def _inductor_default_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default
    except ImportError:  # another torch layout: only a user's setting can be there
        return None
    return os.path.abspath(inductor_default())


def use_persistent_cache() -> Path:
    """Point Inductor's caches at :func:`cache_dir` and switch its FX graph cache on; returns the
    directory. Process-wide, as Inductor's configuration is."""
    directory = cache_dir()
    os.environ[CACHE_ENV] = str(directory)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    return directory


def inductor_compiler(fn: StageFn) -> StageFn:
    """``torch.compile`` with Inductor's default mode (no CUDA graphs of its own); shapes that
    change are recompiled, and made dynamic by Dynamo if they keep changing."""
    use_persistent_cache()
    return torch.compile(fn, mode="default")


@dataclass
class CompileStats:
    """``compiles``: calls that met a new input shape (and compiled, or loaded from the cache);
    ``seconds``: wall time of those calls, the compiling included; ``failure``: why compiling was
    given up, or None."""

    compiles: int = 0
    seconds: float = 0.0
    failure: str | None = None


class CompiledStage:
    """Runs ``fn`` compiled by ``compiler``, eagerly once compiling has failed."""

    def __init__(self, name: str, fn: StageFn, compiler: Compiler = inductor_compiler) -> None:
        self.name = name
        self.stats = CompileStats()
        self._fn = fn
        self._compiler = compiler
        self._compiled: StageFn | None = None
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    @staticmethod
    def key(inputs: tuple[torch.Tensor, ...]) -> Hashable:
        return tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.stats.failure is not None:
            return tuple(self._fn(*inputs))
        key = self.key(inputs)
        if key in self._seen:
            try:
                return tuple(self._compiled(*inputs))  # type: ignore[misc]
            except Exception as exc:  # a recompile (guards failed) can fail as the first compile can
                return self._give_up(exc, inputs)
        # A new shape compiles: one caller at a time, timed to the end of the device's work.
        with self._lock:
            if self.stats.failure is not None:
                return tuple(self._fn(*inputs))
            start = time.perf_counter()
            try:
                if self._compiled is None:
                    self._compiled = self._compiler(self._fn)
                out = tuple(self._compiled(*inputs))
                if inputs and inputs[0].device.type == "cuda":
                    torch.cuda.synchronize(inputs[0].device)
            except Exception as exc:  # whatever went wrong, the eager stage gives the same results
                return self._give_up(exc, inputs)
            self.stats.compiles += 1
            self.stats.seconds += time.perf_counter() - start
            self._seen.add(key)
            return out

    def _give_up(self, exc: Exception, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        message = str(exc).strip()
        # Compiler errors run to pages: the first line names the problem.
        self.stats.failure = f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"
        warnings.warn(
            f"compiling the {self.name} with torch.compile failed ({self.stats.failure}); "
            f"running it eagerly from now on (same results, slower)",
            CompileWarning,
            stacklevel=3,
        )
        return tuple(self._fn(*inputs))
