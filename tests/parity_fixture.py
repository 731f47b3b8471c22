"""Rebuild the parity fixture's checkpoint from its compact weight spec.

The fixture (``tests/data/hodor-parity/case-a``) holds the official pipeline's
output masks on a synthetic clip and a spec from which its deterministic,
official-format checkpoint is drawn: every key's shape and a drawing rule, with
integer buffers and the attention scaling factors stored as they are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch

CASE_A = Path(__file__).parent / "data" / "hodor-parity" / "case-a"


def _draw(key: str, shape: list[int], rule: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((zlib.crc32(key.encode()) ^ seed) & 0x7FFFFFFF)
    x = torch.randn(*shape, generator=gen, dtype=torch.float32)
    scale = {
        "fan_in": lambda: x / float(np.sqrt(max(1, int(np.prod(shape[1:]))))),
        "norm_weight": lambda: 1.0 + 0.1 * x,
        "bias": lambda: 0.05 * x,
        "rel_pos_table": lambda: 0.5 * x,
        "unit": lambda: x,
    }
    if rule not in scale:
        raise ValueError(f"unknown drawing rule {rule!r} for {key}")
    return scale[rule]()


def build_state_dict(spec_dir: Path = CASE_A / "spec") -> dict[str, torch.Tensor]:
    spec = json.loads((spec_dir / "spec.json").read_text())
    fixed = np.load(spec_dir / "fixed.npz")
    sd = {}
    for key, entry in spec["tensors"].items():
        if entry["rule"] == "fixed":
            sd[key] = torch.from_numpy(fixed[key].copy())
        else:
            sd[key] = _draw(key, entry["shape"], entry["rule"], spec["seed"])
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().numpy().tobytes())
    if h.hexdigest() != spec["sha256"]:
        raise RuntimeError("parity weights differ from the spec's sha256: torch's CPU generator changed?")
    return sd


def write_checkpoint(out_dir: Path, spec_dir: Path = CASE_A / "spec") -> Path:
    """Write ``out_dir/model.pth`` (``{"model": state_dict}``) and ``out_dir/config.yaml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_state_dict(spec_dir)}, out_dir / "model.pth")
    shutil.copy(spec_dir / "config.yaml", out_dir / "config.yaml")
    return out_dir / "model.pth"
