"""``benchmarks/cpu_floor.py``: the arithmetic it counts, the rates it measures and the bound it draws.

No speed is asserted; the counts are checked against formulas, the report's arithmetic against
hand-made probes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hodor.config import CHANNELS, parse_config
from hodor.model import HodorNet
from tests.bench_scripts import load_bench_script


@pytest.fixture
def floor(monkeypatch):
    return load_bench_script("cpu_floor", monkeypatch)


def _call(*args):
    return SimpleNamespace(args=args)


def test_counts_products_and_convolutions(floor):
    c, h, w = 8, 6, 10
    weight = torch.randn(c, c, 3, 3)
    backend = SimpleNamespace(
        backbone=lambda x: F.conv2d(x, weight, padding=1),
        encode=lambda a, b: a @ b,
        decode=lambda x: torch.relu(x).sum(),  # no product: nothing counted
    )
    calls = {
        "backbone": _call(torch.randn(1, c, h, w)),
        "encode": _call(torch.randn(5, 7), torch.randn(7, 3)),
        "decode": _call(torch.randn(4, 4)),
    }
    flops = floor.stage_flops(backend, calls)
    assert flops == {"backbone": 2.0 * h * w * c * c * 9, "encode": 2.0 * 5 * 7 * 3, "decode": 0.0}


def test_winograd_count_takes_only_the_dense_3x3_convolutions(floor):
    """Only what the Winograd rewrite takes: 3x3, stride 1, padding 1, no groups, MIN_CHANNELS or
    more in and out; narrower, strided, grouped or 1x1 convolutions and products are not counted."""
    from hodor.engine.backends.winograd_conv import MIN_CHANNELS

    c, h, w = MIN_CHANNELS, 6, 10
    wide = torch.randn(c, c, 3, 3)
    narrow = torch.randn(8, c, 3, 3)

    def backbone(x):
        y = F.conv2d(x, wide, padding=1)  # counted
        F.conv2d(x, narrow, padding=1)  # too few outputs
        F.conv2d(x, wide, padding=1, stride=2)  # strided
        F.conv2d(x, wide.reshape(2 * c, c // 2, 3, 3)[:c], padding=1, groups=2)  # grouped
        F.conv2d(x, wide[:, :, :1, :1])  # 1x1
        return y

    backend = SimpleNamespace(backbone=backbone, encode=lambda a, b: a @ b, decode=torch.relu)
    calls = {
        "backbone": _call(torch.randn(1, c, h, w)),
        "encode": _call(torch.randn(5, 7), torch.randn(7, 3)),
        "decode": _call(torch.randn(4, 4)),
    }
    dense = floor.winograd_flops(backend, calls)
    assert dense == {"backbone": 2.0 * h * w * c * c * 9, "encode": 0.0, "decode": 0.0}
    assert dense["backbone"] < floor.stage_flops(backend, calls)["backbone"]


def test_decoder_count_includes_the_deformable_products(floor):
    """The decoder's heaviest work is the deformable convolutions' products and the 1/4 convolutions:
    a count that missed them (grid sampling feeding a matmul) would understate the floor."""
    torch.manual_seed(0)
    cfg = parse_config({}).model
    net = HodorNet(cfg).eval().requires_grad_(False)
    h, w, objects, history = 4, 6, 2, 3
    f4, f8 = torch.randn(1, CHANNELS, 2 * h, 2 * w), torch.randn(1, CHANNELS, h, w)
    qb = cfg.num_bg_descriptors
    args = (
        f4,
        f8,
        torch.randn(1, objects, history, CHANNELS),
        torch.randn(1, qb, history, CHANNELS),
        torch.zeros(1, objects, history, dtype=torch.bool),
        torch.zeros(1, qb, history, dtype=torch.bool),
    )
    nothing = _call(torch.zeros(1))
    backend = SimpleNamespace(backbone=torch.relu, encode=torch.relu, decode=net.decode)
    flops = floor.stage_flops(backend, {"backbone": nothing, "encode": nothing, "decode": _call(*args)})
    deformable = cfg.decoder_layers * 2 * h * w * 9 * CHANNELS * CHANNELS
    conv_4x = 2 * (2 * h) * (2 * w) * 9 * CHANNELS * CHANNELS
    catch_all = 2 * (2 * h) * (2 * w) * 9 * CHANNELS * (CHANNELS // 2)
    assert flops["decode"] >= deformable + conv_4x + catch_all
    assert flops["backbone"] == flops["encode"] == 0.0


def test_peaks_floors_and_bound(floor):
    probes = [
        floor.Probe("a", "fp32", "onnxruntime", 1.0, [10.0, 12.0, 8.0]),  # median 10 ms: 100 GFLOP/s
        floor.Probe("b", "fp32", "openvino", 1.0, [20.0]),  # 50 GFLOP/s
        floor.Probe("c", "bf16", "openvino", 2.0, [10.0]),  # 200 GFLOP/s
    ]
    assert floor.attained_peaks(probes) == pytest.approx({"fp32": 100.0, "bf16": 200.0})
    flops = {"backbone": 60e9, "encode": 10e9, "decode": 30e9}  # 100 GFLOP a frame
    stage_ms = {"backbone": 900.0, "encode": 100.0, "decode": 500.0}
    text = floor.floor_section(flops, probes, {"x (torch, int8)": "why"}, "base", stage_ms, 1700.0)
    # fp32 floor: 100 GFLOP at 100 GFLOP/s = 1000 ms; bf16: 500 ms
    assert "- fp32: at most 1.70x (floor 1000 ms)" in text
    assert "- bf16: at most 3.40x (floor 500 ms)" in text
    assert "| backbone | 60.0 | 600 | 300 | 900 | 67 |" in text
    assert "| frame (three stages) | 100.0 | 1000 | 500 | 1500 | 67 |" in text
    assert "not measured: x (torch, int8): why" in text
    assert "Winograd" not in text
    # 40 of the 100 GFLOP in dense 3x3 convolutions, as F(6x6, 3x3) 64 / 324 of them:
    # 60 + 7.9 = 67.9 GFLOP, 679 ms at 100 GFLOP/s
    assert floor.WINOGRAD_FRACTION == pytest.approx(64 / 324)
    dense = {"backbone": 30e9, "encode": 0.0, "decode": 10e9}
    text = floor.floor_section(flops, probes, {}, "base", stage_ms, 1700.0, winograd=dense)
    assert "F(6x6, 3x3)" in text
    assert "the products are 67.9 GFLOP (their transforms not counted): fp32 floor 679 ms" in text
    assert "at most 2.50x base." in text


def test_probes_run_and_report_what_they_skip(floor):
    lines = []
    threads = torch.get_num_threads()
    probes, skipped = floor.measure_probes((64, 96), repeats=1, threads=1, log=lines.append, square_size=64)
    assert {p.precision for p in probes} >= {"fp32"}
    assert all(p.gflops_per_s > 0 and len(p.ms) == 1 for p in probes)
    assert len(lines) == len(probes)
    conv = next(p for p in probes if p.name.startswith("3x3 conv"))
    assert conv.gflop == pytest.approx(2 * 16 * 24 * 256 * 256 * 9 / 1e9)
    assert all(why for why in skipped.values())
    assert torch.get_num_threads() == threads  # the caller's setting is given back


def test_cpu_tail_benchmark_runs(capsys, monkeypatch):
    """``benchmarks/cpu_tail.py`` at a tiny size: it checks its arg-max and its compiled post-decode
    against PyTorch's and reports."""
    module = load_bench_script("cpu_tail", monkeypatch)
    assert module.main(["--min-dim", "64", "--objects", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| post-decode (masks_from_logits) |" in out and "| arg-max: channel_argmax |" in out
    assert "| post-decode, compiled pass (native_tail) |" in out
