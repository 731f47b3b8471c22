"""Smoke test of ``benchmarks/cpu_backends.py`` on the suite's shared export, at a tiny size.

No timing is asserted (speed on a shared CI machine says nothing about the code); what is checked:
it runs every requested candidate, reports each one's figures, and the fp32 candidates agree with
the PyTorch model to fp32 accuracy on the recorded frame.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.bench_scripts import load_bench_script
from tests.test_export_shared import ExportRun, shared_export


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def _load_script(monkeypatch):
    return load_bench_script("cpu_backends", monkeypatch)


def test_cpu_backends_smoke(exported, tmp_path, capsys, monkeypatch):
    bench = _load_script(monkeypatch)
    candidates = ["onnxruntime-baseline", "onnxruntime", "torch", "torch-gridsample"]
    if importlib.util.find_spec("openvino") is not None:
        candidates.append("openvino")
    out = tmp_path / "cpu.json"
    argv = ["--checkpoint", str(exported.checkpoint), "--export", str(exported.directory), "--json", str(out)]
    argv += ["--min-dim", "64", "--objects", "2", "--window", "2", "--repeats", "2", "--frames", "1"]
    assert bench.main([*argv, "--candidates", *candidates, "--floor"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    # --floor: each stage's arithmetic counted, the machine's products timed, the bound drawn
    assert set(report["floor"]["flops"]) == {"backbone", "encode", "decode"}
    assert all(v > 0 for v in report["floor"]["flops"].values())
    assert {p["precision"] for p in report["floor"]["probes"]} >= {"fp32"}
    assert "- fp32: at most " in table and "| frame (three stages) |" in table
    assert [r["name"] for r in report["results"]] == candidates and not report["skipped"]
    for r in report["results"]:
        assert f"| {r['name']} |" in table
        assert len(r["fps"]) == 2 and all(f > 0 for f in r["fps"])
        assert all(r["stage_ms"][s]["n"] == 2 for s in ("backbone", "encode", "decode"))
        assert set(r["startup_s"]) == {"cold", "warm"}
        assert set(r["rel_err"]) == {"f4", "f8", "fg_desc", "bg_desc", "logits"}
        assert max(v[0] for v in r["rel_err"].values()) <= 1e-4, (r["name"], r["rel_err"])
    rows = {r["name"]: r for r in report["results"]}
    assert all(v[0] == 0.0 for v in rows["torch-gridsample"]["rel_err"].values())  # the reference itself
    # The backend's own sampling on the CPU (gathered): the same features, a decoder within fp32 rounding.
    assert all(rows["torch"]["rel_err"][k][0] == 0.0 for k in ("f4", "f8", "fg_desc", "bg_desc"))
    assert rows["torch"]["rel_err"]["logits"][0] <= 1e-5


def test_checkpoint_needs_its_export(tmp_path, capsys, monkeypatch):
    assert _load_script(monkeypatch).main(["--checkpoint", str(tmp_path / "m.pth")]) == 2
    assert "--checkpoint and --export go together" in capsys.readouterr().err


def test_int8_trial_runs_and_reports(exported, tmp_path, capsys, monkeypatch):
    """``benchmarks/cpu_int8.py`` at a tiny size on the suite's shared export: it quantizes,
    compiles and times both stages, and its fp32 rows match PyTorch to fp32 accuracy."""
    pytest.importorskip("openvino", reason="the int8 trial runs on OpenVINO")
    module = load_bench_script("cpu_int8", monkeypatch)
    out = tmp_path / "int8.json"
    argv = ["--min-dim", "64", "--objects", "2", "--window", "2", "--calibration-frames", "1"]
    argv += ["--repeats", "1", "--json", str(out)]
    argv += ["--checkpoint", str(exported.checkpoint), "--export", str(exported.directory)]
    assert module.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["quantized_nodes"]["backbone"] > 0 and report["quantized_nodes"]["decoder"] > 0
    for stage in ("backbone", "decoder"):
        assert report["rel_err"][stage]["fp32"] <= 1e-4
        assert 0 < report["rel_err"][stage]["int8"] < 1.0  # quantized: not exact, not garbage
        assert all(len(v) == 1 for v in report["ms"][stage].values())
    assert "| backbone |" in capsys.readouterr().out


def test_deform_ways_compute_the_same_function(monkeypatch):
    """``benchmarks/cpu_deform.py``: every way of running the deformable convolution agrees with
    float64 (fp32 ways to fp32 accuracy, the ways with bf16 products to bf16's)."""
    module = load_bench_script("cpu_deform", monkeypatch)
    lines, errors = module.compare_ways(64, 1, lambda msg: None)
    assert {"torch-grid fp32", "torch-gather fp32", "torch-grid bf16", "torch-gather bf16"} <= set(errors)
    if importlib.util.find_spec("openvino") is not None:
        from hodor.engine.backends.openvino_ops import ExtensionUnavailable, extension_library

        try:
            extension_library()
            assert len(errors) == 9 and "openvino-engine-columns bf16" in errors
        except ExtensionUnavailable:  # no compiler here: that way is left out
            assert len(errors) == 8
    for name, err in errors.items():
        assert err <= (1e-5 if name.endswith("fp32") or "fused" in name else 2e-2), (name, err)
        assert any(line.startswith(f"| {name} |") for line in lines)


def test_deform_profile_lists_the_decoders_nodes(exported, capsys, monkeypatch):
    pytest.importorskip("openvino", reason="the profile is OpenVINO's")
    module = load_bench_script("cpu_deform", monkeypatch)
    argv = ["--profile", "fp32", "--min-dim", "64", "--objects", "2", "--window", "2", "--repeats", "1"]
    argv += ["--checkpoint", str(exported.checkpoint), "--export", str(exported.directory)]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    for stage in ("backbone", "encoder", "decoder"):
        assert f"\n{stage}: call " in out
    assert "| DeformableConvolution |" in out.split("\ndecoder: ")[1]


def test_twins_read_the_other_export(monkeypatch, tmp_path):
    """``--also-export``: every candidate that reads an export gets a twin on the other directory."""
    bench = _load_script(monkeypatch)
    seen = []
    monkeypatch.setitem(
        bench.CANDIDATES,
        "onnxruntime",
        bench.Candidate("onnxruntime", "d", lambda model, cache: seen.append(model.export_dir)),
    )
    other = tmp_path / "other.hodor"
    assert bench.add_twins(["onnxruntime", "torch"], other) == ["onnxruntime@other"]
    model = bench.Model(config=None, checkpoint=tmp_path / "m.pth", export_dir=tmp_path / "m.hodor")
    bench.CANDIDATES["onnxruntime@other"].open(model, None)
    assert seen == [other] and "torch@other" not in bench.CANDIDATES


def test_cpu_chunk_smoke(exported, tmp_path, capsys, monkeypatch):
    """``benchmarks/cpu_chunk.py`` at a tiny size: each candidate's backbone at every batch, and
    whole clips at every chunk, each clip segmented to its end (no timing asserted)."""
    bench = load_bench_script("cpu_chunk", monkeypatch)
    out = tmp_path / "chunk.json"
    argv = ["--checkpoint", str(exported.checkpoint), "--export", str(exported.directory), "--json", str(out)]
    argv += ["--min-dim", "64", "--objects", "2", "--window", "2", "--repeats", "2", "--frames", "5"]
    assert bench.main([*argv, "--candidates", "onnxruntime", "--chunks", "1", "3"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert not report["skipped"]
    per_frame = report["backbone_ms_per_frame"]["onnxruntime"]
    assert set(per_frame) == {"1", "3"} and all(len(v) == 2 and min(v) > 0 for v in per_frame.values())
    clips = report["clips"]["onnxruntime"]
    for chunk in ("1", "3"):
        assert len(clips[chunk]["fps"]) == 2 and min(clips[chunk]["fps"]) > 0
        assert all(0 < s < 60 for s in clips[chunk]["first_mask_s"])
        assert f"| onnxruntime | {chunk} |" in table
    assert "batch 3 / batch 1" in table
    with pytest.raises(SystemExit):
        bench.main(["--chunks", "0"])
