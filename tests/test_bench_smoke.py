"""Smoke test of ``benchmarks/fps.py --quick``: it runs, and writes its JSON and plot.

No timing is asserted: speed on a shared CI machine says nothing about the code. The first run
exports ONNX graphs of the benchmark's random weights (a minute or two on 2 cores); later runs reuse
them from the cache (``$HODOR_BENCH_CACHE``, default ``~/.cache/hodor-engine/bench``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
FPS = REPO / "benchmarks" / "fps.py"
OFFICIAL = REPO / "benchmarks" / "official_baseline.py"

TOP_KEYS = {
    "schema",
    "command",
    "date",
    "quick",
    "machine",
    "settings",
    "backends",
    "setup_s",
    "results",
    "throughput",
    "batched",
    "ratios",
    "io",
    "official",
    "files",
    "elapsed_s",
    "end_to_end",
}
MACHINE_KEYS = {"cpu_model", "cpu_count", "cpus_usable", "memory_total_gib", "torch", "device", "cuda"}
RESULT_KEYS = {
    "backend",
    "min_dim",
    "objects",
    "input_size",
    "padded_size",
    "history_slots",
    "fps",
    "latency_ms",
    "stage_calls_per_frame",
    "cpu_seconds_per_wall_second",
    "memory",
}
LATENCY_KEYS = {"frame", "backbone", "encode", "decode", "runtime"}
STAT_KEYS = {"n", "median", "min", "max", "p25", "p75", "mean", "values"}


@pytest.mark.slow
def test_quick_benchmark_writes_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    no_checkout = tmp_path / "no-checkout"
    # One object count (--quick's grid has two): the grid's shape is checked from the settings,
    # and the suite's time is better spent elsewhere.
    one_object = ["--objects", "1"]
    proc = subprocess.run(
        [sys.executable, str(FPS), "--quick", *one_object, "--out", str(out), "--official", str(no_checkout)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "fps.json").read_text())
    png = out / "fps_vs_objects.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| torch |" in (out / "fps.md").read_text()

    assert TOP_KEYS <= set(report)
    assert MACHINE_KEYS <= set(report["machine"])
    settings = report["settings"]
    assert report["quick"] is True
    assert settings["window"] == 7

    measured = [b["name"] for b in report["backends"] if b["status"] == "measured"]
    assert "torch" in measured, report["backends"]
    for b in report["backends"]:
        if b["status"] != "measured":
            assert b["reason"], b  # never silently dropped
    if not torch.cuda.is_available():
        reasons = {b["name"]: b["reason"] for b in report["backends"] if b["status"] != "measured"}
        for gpu_only in ("torch-triton-fp16", "torch-triton-bf16", "tensorrt"):
            assert "CUDA GPU" in reasons[gpu_only]

    configs = {(d, o) for d in settings["min_dims"] for o in settings["objects"]}
    for name in measured:
        rows = [r for r in report["results"] if r["backend"] == name]
        assert {(r["min_dim"], r["objects"]) for r in rows} == configs
        for r in rows:
            assert RESULT_KEYS <= set(r)
            assert LATENCY_KEYS <= set(r["latency_ms"])
            assert STAT_KEYS <= set(r["fps"])
            assert r["fps"]["median"] > 0 and r["fps"]["min"] > 0
            assert r["fps"]["n"] == settings["repeats"]
            assert r["latency_ms"]["backbone"]["median"] > 0
            assert r["stage_calls_per_frame"]["backbone"] == 1  # one backbone call per stepped frame
            assert r["memory"]["host_peak_rss_mib"] > 0
    for t in report["throughput"]:
        assert t["streams"] == settings["streams"] and t["fps_total"]["median"] > 0
    assert settings["batch_streams"] == [1, 2]  # --quick
    for name in measured:
        batched = [b for b in report["batched"] if b["backend"] == name]
        assert {(b["min_dim"], b["objects"], b["streams"]) for b in batched} == {
            (d, o, n) for d, o in configs for n in settings["batch_streams"]
        }, name
        for b in batched:
            for key in ("fps_total", "separate_fps_total", "fps_ratio"):
                assert b[key]["n"] == settings["throughput_repeats"] and b[key]["median"] > 0, (name, key)
            assert b["video_latency_ms"]["n"] == settings["throughput_repeats"] * settings["frames"]
            assert b["memory"]["host_peak_rss_mib"] > 0
    assert "Batches of sessions" in (out / "fps.md").read_text()
    if "onnxruntime" in measured:
        ratios = [q for q in report["ratios"] if q["backend"] == "onnxruntime"]
        assert len(ratios) == len(configs) and all(q["fps_ratio"]["median"] > 0 for q in ratios)
    for io in report["io"]:
        assert io["mask_write"]["ms_per_frame"]["median"] > 0

    # End to end: hodor-run's path and the model alone, per measured backend and min_dim, and the
    # command's start-up in a fresh process.
    e2e = report["end_to_end"]
    done = {(r["backend"], r["min_dim"]) for r in e2e["results"]}
    for name in measured:
        for d in settings["min_dims"]:
            assert (name, d) in done or f"{name} at min_dim {d}" in e2e["failures"]
    torch_e2e = [r for r in e2e["results"] if r["backend"] == "torch"]
    assert torch_e2e, e2e["failures"]
    for r in torch_e2e:
        assert r["frames"] == settings["e2e_frames"] and r["fps"]["median"] > 0
        assert r["model_only_fps"]["median"] > 0 and r["ratio"]["median"] > 0
        assert 0 < r["stage_share"]["median"] <= 1.5
        startup = r["startup"]
        assert startup["status"] == "measured", startup
        assert startup["first"]["startup_s"] > 0 and "import torch" in startup["first"]["phases_s"]
    assert "end to end" in proc.stdout

    official = report["official"]
    assert official["status"] == "skipped" and official["reason"]
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in official["reason"]
    assert "onnxruntime" in proc.stdout or "onnxruntime" not in measured  # the table went to stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_official_baseline_says_it_needs_a_gpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(OFFICIAL),
            "--checkout",
            str(tmp_path),
            "--inputs",
            str(tmp_path / "none.npz"),
            "--out",
            str(tmp_path / "out.json"),
            "--min-dims",
            "128",
            "--objects",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr
