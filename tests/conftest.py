from __future__ import annotations

from pathlib import Path

import pytest

from tests.parity_fixture import CASE_A, write_checkpoint


@pytest.fixture(scope="session")
def parity_checkpoint(tmp_path_factory) -> Path:
    """The parity fixture's official-format checkpoint, with its config.yaml beside it."""
    return write_checkpoint(tmp_path_factory.mktemp("parity-ckpt"))


@pytest.fixture(scope="session")
def parity_case() -> Path:
    return CASE_A
