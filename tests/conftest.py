from __future__ import annotations

import os
from pathlib import Path

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. at import: set it before any
# test module imports triton, so that the kernels run in the interpreter where no GPU exists.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from tests.parity_fixture import CASE_A, write_checkpoint


@pytest.fixture(scope="session")
def parity_checkpoint(tmp_path_factory) -> Path:
    """The parity fixture's official-format checkpoint, with its config.yaml beside it."""
    return write_checkpoint(tmp_path_factory.mktemp("parity-ckpt"))


@pytest.fixture(scope="session")
def parity_case() -> Path:
    return CASE_A


@pytest.fixture(scope="session")
def openvino_ops_library() -> str:
    """The engine's OpenVINO operations built for this machine, where the backend keeps them
    (built once for the suite, a quarter of a minute on 2 cores). Building itself is tested apart,
    into directories of its own (``tests/test_deform_columns.py``)."""
    pytest.importorskip("openvino", reason="the engine's operations run in OpenVINO")
    from hodor.engine.backends.openvino_ops import extension_library

    return str(extension_library())


@pytest.fixture
def interpreter(monkeypatch):
    """Run CPU launches in Triton's interpreter (also where a GPU is present)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
