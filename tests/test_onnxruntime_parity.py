"""``hodor-export`` then ``hodor-run --backend onnxruntime`` against the official masks of case-a.

Both through their command lines (the export is the suite's shared one). The rule
(fixtures/hodor-parity/README.md): on frames without a reference, >= 99.9 % of pixels equal
the official output; on reference frames every annotated pixel carries its id and >= 99 %
of pixels agree.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.test_export_shared import ExportRun, shared_export

FRAME_THRESHOLD = 0.999
REFERENCE_FRAME_THRESHOLD = 0.99


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def test_onnxruntime_matches_the_official_pipeline(exported, parity_case, tmp_path):
    video = parity_case / "video" / "JPEGImages" / "synth"
    annotations = parity_case / "video" / "Annotations" / "synth"
    expected = np.load(parity_case / "expected" / "masks.npy")
    settings = json.loads((parity_case / "expected" / "settings.json").read_text())
    references = {int(t): ids for t, ids in settings["refs"].items()}
    out = tmp_path / "out"
    argv = [
        *(sys.executable, "-m", "hodor.engine.cli", str(video)),
        *("--masks", *(str(annotations / f"{t:05d}.png") for t in sorted(references))),
        *("--model", str(exported.directory), "--backend", "onnxruntime", "--device", "cpu"),
        *("--min-dim", str(settings["min_dim"]), "--temporal-window", str(settings["temporal_window"])),
        *("--out", str(out), "--no-overlay"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "backend onnxruntime" in summary, summary

    stems = sorted(p.stem for p in video.iterdir())
    assert len(stems) == len(expected)
    report, failures = [], []
    for t, stem in enumerate(stems):
        got = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        agree = float((got == expected[t]).mean())
        report.append(f"{stem} {100 * agree:.3f}%")
        if t in references:
            ref = np.asarray(Image.open(annotations / f"{stem}.png"))
            annotated = ref > 0
            if not (got[annotated] == ref[annotated]).all():
                failures.append(f"{stem}: an annotated pixel lost its id")
            if agree < REFERENCE_FRAME_THRESHOLD:
                failures.append(f"{stem}: {agree:.4%} < {REFERENCE_FRAME_THRESHOLD:.0%} (reference frame)")
        elif agree < FRAME_THRESHOLD:
            failures.append(f"{stem}: {agree:.4%} < {FRAME_THRESHOLD:.1%}")
    print("onnxruntime vs official:", ", ".join(report))
    assert not failures, failures
