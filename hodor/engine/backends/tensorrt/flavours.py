"""The two TensorRT flavours behind one adapter, and TensorRT's logger.

- ``tensorrt`` (module ``tensorrt``): data-centre GPUs. An engine runs only on the GPU
  model and TensorRT version it was built with, so it is built on that GPU.
- ``rtx`` (module ``tensorrt_rtx``, "TensorRT for RTX"): builds ahead of time for a
  list of compute capabilities, with no GPU present, and compiles its kernels just in
  time on first use; a runtime cache keeps those kernels between runs.

Both modules share the API this project uses; where they differ, callers branch on
:attr:`Flavour.name`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from hodor.errors import HodorError

logger = logging.getLogger(__name__)

#: Flavour name (``--trt-flavour``) -> Python module.
FLAVOUR_MODULES: dict[str, str] = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
FLAVOUR_LABELS: dict[str, str] = {"tensorrt": "TensorRT", "rtx": "TensorRT for RTX"}
INSTALL_HINT = (
    "install one: pip install 'hodor-engine[tensorrt]' (TensorRT: data-centre GPUs, builds on the GPU) "
    "or pip install 'hodor-engine[tensorrt-rtx]' (TensorRT for RTX: Ampere and newer RTX GPUs, "
    "builds without a GPU)"
)


@dataclass(frozen=True)
class Flavour:
    """An importable TensorRT flavour: ``name`` is ``tensorrt`` or ``rtx``."""

    name: str
    module: ModuleType
    version: str

    @property
    def label(self) -> str:
        return FLAVOUR_LABELS[self.name]


def _import_flavour(name: str) -> ModuleType | None:
    """The flavour's module, or ``None`` when it is not installed or unusable.

    A broken install (missing shared libraries) raises ``OSError``; PyPI's download
    stubs import but carry no ``Runtime``: both count as not installed.
    """
    try:
        module = importlib.import_module(FLAVOUR_MODULES[name])
    except (ImportError, OSError):
        return None
    if not hasattr(module, "Runtime"):
        return None
    return module


def installed_flavours() -> list[str]:
    """Names of the flavours that import here, ``tensorrt`` first."""
    return [name for name in FLAVOUR_MODULES if _import_flavour(name) is not None]


def load_flavour(name: str) -> Flavour:
    """Import flavour ``name``; ``HodorError`` saying how to install it when that fails."""
    if name not in FLAVOUR_MODULES:
        raise HodorError(f"unknown TensorRT flavour {name!r}: choose one of {', '.join(FLAVOUR_MODULES)}")
    module = _import_flavour(name)
    if module is None:
        raise HodorError(
            f"{FLAVOUR_LABELS[name]} (module {FLAVOUR_MODULES[name]}) is not installed: {INSTALL_HINT}"
        )
    return Flavour(name=name, module=module, version=str(module.__version__))


class CapturingLogger:
    """Builds a TensorRT ``ILogger`` that keeps errors for messages and forwards the rest.

    TensorRT reports why a parse, build or deserialisation failed only through its
    logger, so the text is kept to put into the ``HodorError`` a user sees.
    """

    def __new__(cls, flavour: Flavour, quiet: tuple[str, ...] = ()) -> Any:
        trt = flavour.module

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.quiet = quiet

            def log(self, severity: Any, msg: str) -> None:
                if any(q in msg for q in self.quiet):
                    return
                sev = trt.ILogger.Severity
                # Errors reach the user inside the HodorError that follows them; logged only
                # at INFO so that a command line still fails with one line.
                if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                    self.errors.append(msg)
                    logger.info("%s: %s", flavour.label, msg)
                elif severity == sev.WARNING:
                    logger.info("%s: %s", flavour.label, msg)
                else:
                    logger.debug("%s: %s", flavour.label, msg)

        return _Logger()
