"""One export of the parity checkpoint, shared by the export, ONNX Runtime and TensorRT tests.

Exporting HODOR takes a minute or two on a 2-core machine, so the suite does it once:
``--precision fp16`` writes the fp32 graphs and the fp16 graphs beside them. Each test
module wraps :func:`shared_export` in its own session-scoped fixture; the result is cached
here, in the module, so it is computed once per pytest process.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hodor.config import config_beside
from hodor.export import cli


@dataclass(frozen=True)
class ExportRun:
    directory: Path
    checkpoint: Path
    lines: tuple[str, ...]  # what hodor-export printed
    seconds: float


_CACHE: dict[str, object] = {}


def shared_export(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> ExportRun:
    """``hodor-export CKPT --precision fp16 --tensorrt off`` into a temporary directory, once."""
    if "export" not in _CACHE:
        out = tmp_path_factory.mktemp("export") / "model.hodor"
        argv = [str(checkpoint), "--out", str(out), "--precision", "fp16", "--tensorrt", "off"]
        printed = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            code = cli.main(argv)
        seconds = time.perf_counter() - start
        assert code == 0, f"hodor-export exited with {code}:\n{printed.getvalue()}"
        _CACHE["export"] = ExportRun(out, checkpoint, tuple(printed.getvalue().splitlines()), seconds)
    return _CACHE["export"]  # type: ignore[return-value]


def shared_network(checkpoint: Path) -> torch.nn.Module:
    """The torch network the graphs were exported from (the reference of every comparison)."""
    if "net" not in _CACHE:
        from hodor.model import load_hodor

        _CACHE["net"] = load_hodor(checkpoint, config_beside(checkpoint), torch.device("cpu")).eval()
    return _CACHE["net"]  # type: ignore[return-value]
