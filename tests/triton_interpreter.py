"""Shared by the kernel tests that run in Triton's CPU interpreter.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before any test module imports triton
(where no GPU exists) and provides the ``interpreter`` fixture for a single test.
"""

from __future__ import annotations

import pytest
import torch

from hodor.kernels.testing import interpreter_skip_reason


def skip_on_interpreter(dtype: torch.dtype) -> None:
    """Skip, with the reason, a CPU check in ``dtype`` that the interpreter cannot compute."""
    if reason := interpreter_skip_reason(dtype):
        pytest.skip(reason)
