"""Loads ``scripts/make_synthetic_davis.py`` for tests (``scripts/`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_synthetic_davis.py"


def load_maker():
    spec = importlib.util.spec_from_file_location("make_synthetic_davis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


make_dataset = load_maker().make_dataset
