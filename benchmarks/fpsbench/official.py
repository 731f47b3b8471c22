"""The public HODOR repository's ``InferenceModel``, timed in a subprocess (its package is also named
``hodor``) by ``official_baseline.py`` on the same synthetic frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fpsbench.results import OfficialOutcome, Settings
from fpsbench.synthetic import SyntheticVideo

BASELINE_SCRIPT = Path(__file__).resolve().parents[1] / "official_baseline.py"


def run_official(
    checkout: Path,
    device: torch.device,
    settings: Settings,
    workdir: Path,
    official_config: Path | None,
    log: Callable[[str], None],
) -> OfficialOutcome:
    if device.type != "cuda":
        return OfficialOutcome(
            status="skipped",
            reason="--official needs a CUDA GPU: the public HODOR code calls .cuda() throughout; "
            "run this benchmark on a machine with an NVIDIA GPU",
        )
    if not (checkout / "hodor" / "inference" / "inference_model.py").is_file():
        return OfficialOutcome(
            status="skipped",
            reason=f"{checkout} is not a checkout of the public HODOR repository "
            "(no hodor/inference/inference_model.py)",
        )
    inputs = workdir / "official-inputs.npz"
    arrays: dict[str, np.ndarray] = {}
    for min_dim in settings.min_dims:
        frames = settings.warmup + settings.frames
        for objects in settings.objects:
            video = SyntheticVideo.at(min_dim, objects)
            arrays[f"ref_{min_dim}_{objects}"] = video.reference
        # The frames do not depend on the object count: stored once per size.
        arrays[f"frames_{min_dim}"] = np.stack([video.frame(t) for t in range(frames)])
    np.savez(inputs, **arrays)
    result_path = workdir / "official-result.json"
    cmd = [
        sys.executable,
        str(BASELINE_SCRIPT),
        "--checkout",
        str(checkout),
        "--inputs",
        str(inputs),
        "--out",
        str(result_path),
        "--window",
        str(settings.window),
        "--repeats",
        str(settings.repeats),
        "--min-dims",
        *map(str, settings.min_dims),
        "--objects",
        *map(str, settings.objects),
    ]
    if official_config is not None:
        cmd += ["--config", str(official_config)]
    log("official: " + " ".join(cmd))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, env=env, cwd=str(workdir), text=True, capture_output=True)
    if proc.returncode != 0 or not result_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return OfficialOutcome(status="failed", reason=f"exit status {proc.returncode}", stderr_tail=tail)
    return OfficialOutcome.from_json(json.loads(result_path.read_text()))
