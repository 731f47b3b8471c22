"""benchmarks/kernels.py without a GPU: it imports, parses its arguments, builds every
workload correctly, and refuses to measure without CUDA. (Its timings need a GPU.)"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from hodor.kernels.testing import assert_close

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("hodor_kernel_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_defaults(bench):
    args = bench.parse_args([])
    assert args.min_dims == [480, 720, 1080] and args.objects == [1, 4, 16]
    assert args.kernels == list(bench.KERNELS) and args.dtype == "fp16" and not args.graphs


def test_arguments(bench, tmp_path):
    args = bench.parse_args(
        ["--kernels", "mask_logits", "--min-dims", "480", "--objects", "4", "--dtype", "bf16", "--graphs",
         "--out", str(tmp_path / "r.md"), "--iters", "5"]
    )  # fmt: skip
    assert args.kernels == ["mask_logits"] and args.dtype == "bf16" and args.graphs and args.iters == 5
    with pytest.raises(SystemExit):
        bench.parse_args(["--kernels", "softmax"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--history", "0"])


def test_frame_sizes(bench):
    assert bench.Case("mask_logits", 480, 1, 1).map8 == (60, 108)
    assert bench.Case("mask_logits", 720, 1, 1).map8 == (92, 160)
    assert bench.Case("mask_logits", 1080, 1, 1).map8 == (136, 240)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(bench, capsys):
    assert bench.main(["--iters", "1"]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("kernel", ["soft_masked_attention", "pixel_descriptor_attention", "mask_logits",
                                    "masked_avg_pool", "deform_conv"])  # fmt: skip
def test_workloads_agree(bench, monkeypatch, kernel):
    pytest.importorskip("triton", reason="the Triton kernels need the triton package")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    work = bench.make_workload(bench.Case(kernel, 64, 2, 3), torch.float32, torch.device("cpu"))
    assert work.min_bytes > 0
    assert_close(work.triton(*work.args), work.reference(*work.args).double(), torch.float32)
