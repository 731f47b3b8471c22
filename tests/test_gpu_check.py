"""benchmarks/gpu_check.py without a GPU: it refuses to time on the CPU, and its --smoke mode runs
the tail and deformable-convolution stages at tiny sizes in Triton's interpreter, and the
backbone-to-decode hand-over eagerly, and writes its report. (The decode and backbone stages, and
every timing, need a GPU; they were run in --smoke mode when written.)"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("hodor_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_arguments(gpu_check, tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path)])
    assert args.stages == list(gpu_check.STAGES) and args.repeats == 30 and not args.smoke
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(tmp_path), "--repeats", "0"])


def test_smoke_run_writes_its_report(gpu_check, tmp_path, monkeypatch):
    pytest.importorskip("triton", reason="the Triton kernels need the triton package")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    argv = ["--out", str(tmp_path), "--smoke", "--stages", "tail", "deform_conv", "handoff"]
    argv += ["--repeats", "1", "--warmup", "0"]
    assert gpu_check.main(argv) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not data["errors"]
    tail = data["stages"]["tail"]
    assert len(tail) == 4 and all(r["ids differing"] == 0 for r in tail if r["path"] == "output")
    assert all(r["max soft diff"] <= 1e-6 for r in tail if r["path"] == "internal")
    deform = {r["dtype"]: r for r in data["stages"]["deform_conv"]}
    assert deform["fp32"]["rel err vs fp64"] <= 1e-5 and deform["fp16"]["rel err vs fp64"] <= 5e-3
    handoff = data["stages"]["handoff"]
    assert [r["variant"].split()[1] for r in handoff] == ["copied", "in"]
    assert all(r["rel diff vs before"] == 0.0 for r in handoff)  # eager on the CPU: the same calls
    assert "## tail" in (tmp_path / "gpu_check.md").read_text()
