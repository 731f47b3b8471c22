"""``hodor-export`` then ``hodor-run --backend openvino`` (fp32) against the official masks of case-a.

Both through their command lines (the export is the suite's shared one), by the rule of
tests/test_onnxruntime_parity.py: on frames without a reference, >= 99.9 % of pixels equal the
official output; on reference frames every annotated pixel carries its id and >= 99 % agree.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.parity_fixture import parity_check, parity_run_args
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def test_openvino_matches_the_official_pipeline(exported, parity_case, tmp_path):
    out = tmp_path / "out"
    argv = [
        *(sys.executable, "-m", "hodor.engine.cli"),
        *parity_run_args(parity_case, out),
        *("--model", str(exported.directory), "--backend", "openvino", "--device", "cpu"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "backend openvino" in summary, summary

    report, failures = parity_check(parity_case, out)
    print("openvino vs official:\n" + "\n".join(report))
    assert not failures, f"frames below the parity rule: {failures}"
