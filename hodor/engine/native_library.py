"""The small C++ libraries the engine compiles on first use, for the machine it runs on.

Two sources are built this way: the OpenVINO backend's operations
(:mod:`hodor.engine.backends.openvino_ops`) and the CPU post-decode
(:mod:`hodor.engine.loop.native_tail`). Each is compiled with the machine's C++ compiler
(``$CXX``, else ``c++``, ``g++`` or ``clang++``) for this CPU (``-march=native``) and kept in
``$XDG_CACHE_HOME/hodor-engine/<cache name>/`` (by default ``~/.cache/...``), keyed by the
source, the compiler and the CPU (and what else the caller names); entries no start used for
:data:`~hodor.engine.backends.export_files.CACHE_IDLE_DAYS` days are removed. A build is written
whole or not at all. Where a library cannot be built (no compiler, not Linux, a failed build),
:func:`build_library` raises :class:`ExtensionUnavailable` with the reason, and the caller keeps
its slower way.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from hodor.engine.backends.export_files import cpu_flags, mark_used, prune_idle, writable_cache_dir
from hodor.engine.io.files import atomic_write

BUILD_TIMEOUT_S = 300

_lock = threading.Lock()


class ExtensionUnavailable(RuntimeError):
    """A library cannot be built or loaded here; the message says why."""


def compiler() -> str:
    """The C++ compiler to build with: ``$CXX``, else the first of ``c++``, ``g++``, ``clang++``."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise ExtensionUnavailable("no C++ compiler found (set CXX, or install g++)")


@functools.cache  # asked once per process, not at every start
def compiler_version(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ExtensionUnavailable(f"the C++ compiler {compiler} does not run: {exc}") from None
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else compiler


def build_library(
    source: Path,
    prefix: str,
    root: Path,
    names: re.Pattern[str],
    what: str,
    options: Sequence[str] = (),
    key_parts: Sequence[str] = (),
) -> Path:
    """``source`` built into ``root/<prefix>.<key>.so`` (found there, or compiled now), the key
    being the source, ``key_parts``, the compiler and the CPU. ``options`` follow the source on
    the compiler's command line (include paths, libraries, flags). ``what`` names the library in
    the one line printed when a build starts; ``names`` matches the file names of this library's
    builds (current and earlier), those left idle are pruned. Raises :class:`ExtensionUnavailable`."""
    if not sys.platform.startswith("linux"):
        raise ExtensionUnavailable(f"{what} are built on Linux only, not on {sys.platform}")
    cxx = compiler()
    key_text = "\n".join([source.read_text(), *key_parts, compiler_version(cxx), cpu_flags()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    with _lock:
        target = root / f"{prefix}.{key}.so"
        if target.is_file():
            mark_used(target)
            return target
        if writable_cache_dir(root) is None:
            raise ExtensionUnavailable(f"no writable directory for the built library at {root}")
        # Once per machine (and compiler, or source): say why this start takes longer.
        print(
            f"hodor-engine: building {what} for this machine with {Path(cxx).name} "
            f"(once, a few seconds) into {root}",
            file=sys.stderr,
            flush=True,
        )
        command = [cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", str(source), *options]
        try:
            with atomic_write(target) as tmp:
                done = subprocess.run(
                    [*command, "-o", str(tmp)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
                )
                if done.returncode != 0:
                    said = " ".join((done.stderr or done.stdout).split())[-400:]
                    raise ExtensionUnavailable(f"{cxx} failed to build {source.name}: {said}")
        except subprocess.TimeoutExpired:
            took = f"{cxx} took over {BUILD_TIMEOUT_S} s to build {source.name}"
            raise ExtensionUnavailable(took) from None
        except OSError as exc:
            raise ExtensionUnavailable(f"could not build {source.name} into {root}: {exc}") from None
        prune_idle(root, names, keep=target)
        return target
