"""The parts of ``benchmarks/fps.py`` (``benchmarks/fpsbench``) without timing anything real:
statistics, ratios, the plan, the typed report and the three things that read it, the peer
registry and its refusals. Nothing here needs a peer package or a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import fps  # noqa: E402
from fpsbench import results as R  # noqa: E402
from fpsbench.markdown import format_markdown  # noqa: E402
from fpsbench.output import write_outputs  # noqa: E402
from fpsbench.peers import PEERS, PeerPool, PeerSpec, PeerVariant, plan_variants  # noqa: E402
from fpsbench.peers.base import ids_from_scores  # noqa: E402
from fpsbench.plan import make_plan  # noqa: E402
from fpsbench.single_stream import paired_ratio  # noqa: E402
from fpsbench.systems import Unavailable  # noqa: E402
from fpsbench.table import format_table  # noqa: E402
from measurements import summarize  # noqa: E402

CPU = torch.device("cpu")


def test_summarize():
    s = summarize([3.0, 1.0, 2.0])
    assert (s.n, s.median, s.min, s.max, s.values) == (3, 2.0, 1.0, 3.0, [1.0, 2.0, 3.0])
    assert summarize([]).median is None


def test_ratio_pairs_runs_in_run_order():
    # Run 1: 2 vs 1 FPS, run 2: 1 vs 2 FPS -> ratios 2 and 0.5. Pairing sorted values would give 1 and 1.
    q = paired_ratio("a", [2.0, 1.0], "b", [1.0, 2.0], 480, 1)
    assert q.fps_ratio.values == [0.5, 2.0] and q.fps_ratio.median == pytest.approx(1.25)


def test_parse_args_peers():
    assert fps.parse_args(["--peers"]).peers == ["cutie-base", "sam2.1-tiny", "sam2.1-base+"]
    assert fps.parse_args([]).peers is None
    args = fps.parse_args(["--peers", "sam2.1-large", "--peer-settings", "fp32", "--no-peer-native"])
    assert args.peers == ["sam2.1-large"] and args.peer_settings == ["fp32"] and not args.peer_native
    with pytest.raises(SystemExit):
        fps.parse_args(["--peers", "xmem"])


def test_peer_variants_and_names():
    names = [v.name for v in plan_variants(["cutie-base", "sam2.1-tiny"], ["fp32", "fast"], native=True)]
    assert names == [
        "cutie-base/fp32",
        "cutie-base/fast",
        "sam2.1-tiny/fp32",
        "sam2.1-tiny@1024/fp32",
        "sam2.1-tiny/fast",
        "sam2.1-tiny@1024/fast",
    ]
    sam = PeerVariant(PEERS["sam2.1-tiny"], "fp32", native=False)
    assert sam.build_size(480) == 480 and sam.build_size(720) == 736  # Hiera needs a multiple of 32
    assert PeerVariant(PEERS["sam2.1-tiny"], "fp32", native=True).build_size(480) == 1024
    assert PeerVariant(PEERS["cutie-base"], "fp32", native=False).build_size(480) == 0  # any frame size


def test_peer_refusals_say_why():
    missing = PeerSpec("ghost", "no_such_peer_module", "ghost-vos", "ghost.step", None, None)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="pip install ghost-vos"):
        PeerPool([], CPU).check(PeerVariant(missing, "fp32", native=False))
    for name in ("cutie-base", "sam2.1-tiny"):
        with pytest.raises(Unavailable, match="on the CPU only fp32 runs"):
            PEERS[name].fast(CPU)


def test_ids_from_scores():
    scores = torch.tensor([[[2.0, -1.0], [-3.0, 0.5]], [[1.0, 3.0], [-1.0, -2.0]]])  # [N=2, 2, 2]
    ids = ids_from_scores(scores, [7, 3])
    assert ids.dtype == np.uint8
    assert ids.tolist() == [[7, 3], [0, 7]]


def _settings(**kw) -> R.Settings:
    base = dict(min_dims=[480], objects=[1, 2], window=7, warmup=8, frames=3, repeats=3, streams=0,
                throughput_repeats=1, io_frames=4)  # fmt: skip
    return R.Settings(**{**base, **kw})


def test_plan_counts_frames_and_skips_gpu_only_backends():
    variants = plan_variants(["cutie-base", "sam2.1-tiny"], ["fp32", "fast"], native=True)
    unavailable = {v.name: "CUDA only" for v in variants if v.setting == "fast"}
    plan = make_plan(["torch", "tensorrt"], variants, unavailable, _settings(), CPU, 2, export_cached=True)
    by_name = {s.name: s for s in plan.systems}
    assert set(by_name) == {"torch", "cutie-base/fp32", "sam2.1-tiny/fp32", "sam2.1-tiny@1024/fp32"}
    assert plan.skipped["tensorrt"] == "needs a CUDA GPU" and plan.skipped["cutie-base/fast"] == "CUDA only"
    assert by_name["torch"].frames == 2 * (8 + 3 * 3)
    assert by_name["cutie-base/fp32"].frames == 2 * (26 + 3 * 3)  # warm-up until Cutie's memory is full
    assert by_name["torch"].estimate_s and by_name["torch"].estimate_s > 0
    text = plan.text()
    assert "roughly" in text and "tensorrt (needs a CUDA GPU)" in text and f"{plan.frames} frames" in text
    # No cost is assumed for a GPU.
    gpu_plan = make_plan(["torch"], [], {}, _settings(), torch.device("cuda"), 2, export_cached=True)
    assert gpu_plan.estimate_s is None and "no estimate" in gpu_plan.text()
    # A first export adds its time.
    uncached = make_plan(["onnxruntime"], [], {}, _settings(), CPU, 2, export_cached=False)
    assert uncached.export_s > 0 and "export" in uncached.text()


def _stat(values: list[float]) -> R.Stat:
    return summarize(values)


def _report() -> R.Report:
    mem = R.MemoryPeak(1000.0, 10.0, "VmHWM after clear_refs")
    load = R.LoadAverage([1.0, 1.0, 1.0], [1.2, 1.0, 1.0])
    engine = R.EngineResult(
        backend="torch", precision="fp32", min_dim=480, objects=1, input_size=[480, 854],
        padded_size=[480, 864], warmup_frames=8, history_slots=[8], fps=_stat([0.7, 0.8]),
        latency_ms=R.StageLatency(*(_stat([x]) for x in (1400.0, 600.0, 50.0, 650.0, 100.0))),
        stage_calls_per_frame={"backbone": 1.0, "encode": 1.0, "decode": 1.0},
        cpu_seconds_per_wall_second=_stat([1.9]), load_average=load, memory=mem,
    )  # fmt: skip
    peer = R.PeerResult(
        system="sam2.1-tiny@1024/fp32", peer="sam2.1-tiny", setting="fp32", precision="fp32", compiled=False,
        min_dim=480, objects=1, input_size=[480, 854], processing_size=[1024, 1024], warmup_frames=17,
        fps=_stat([0.3, 0.36]), latency_ms=_stat([3000.0]), cpu_seconds_per_wall_second=_stat([1.9]),
        load_average=load, memory=mem,
    )  # fmt: skip
    machine = R.Machine(
        hostname_hash="x", platform="linux", python="3.11", cpu_model="CPU", cpu_flags=[], cpu_count=2,
        cpus_usable=2, load_average_at_start=[1.0, 1.0, 1.0], memory_total_gib=16.0, torch="2.13.0",
        torch_threads=2, versions={"sam2": "1.1.0"}, hodor_engine="0.1.0", git_commit=None, device="cpu",
        cuda=None,
    )  # fmt: skip
    return R.Report(
        command="fps.py --peers",
        date="2026-01-01T00:00:00+00:00",
        quick=False,
        machine=machine,
        settings=_settings(objects=[1]),
        run=R.RunDescription("cpu", "official defaults", {}, "random", "synthetic", "perf_counter", "seam"),
        backends=[
            R.SystemStatus("torch", "PyTorch eager", "measured", setup_s=1.0),
            R.SystemStatus("tensorrt", "TensorRT engines", "skipped", reason="needs a CUDA GPU"),
        ],
        setup_s={},
        results=[engine],
        throughput=[],
        ratios=[],
        io=[R.IoResult(480, [480, 854], 4, failed="no codec")],
        official=R.OfficialOutcome(status="skipped", reason="needs a CUDA GPU"),
        peers=R.PeersOutcome(
            weights="random",
            api={"sam2.1-tiny": "SAM2VideoPredictor.propagate_in_video"},
            variants=[
                R.SystemStatus("sam2.1-tiny@1024/fp32", "api", "measured"),
                R.SystemStatus("sam2.1-tiny@1024/fast", "api", "skipped", reason="CUDA only"),
            ],
            results=[peer],
            ratios=[paired_ratio("torch", [0.7, 0.8], "sam2.1-tiny@1024/fp32", [0.3, 0.36], 480, 1)],
        ),
        files={},
    )


def test_report_formats_read_the_typed_results(tmp_path):
    report = _report()
    assert [r.system for r in report.rows()] == ["torch", "sam2.1-tiny@1024/fp32"]
    md = format_markdown(report)
    assert "| hodor-engine torch | 480 | 1 | 864x480 | fp32 | 8 | 0.75 (0.70-0.80) |" in md
    assert "| sam2.1-tiny@1024/fp32 | 480 | 1 | 1024x1024 | fp32 | 17 | 0.33 (0.30-0.36) |" in md
    assert "| torch / sam2.1-tiny@1024/fp32 | 480 | 1 | 2.28 (2.22-2.33) |" in md
    assert "`sam2.1-tiny@1024/fast`: skipped, CUDA only" in md and "`tensorrt`: needs a CUDA GPU" in md
    table = format_table(report)
    assert "sam2.1-tiny@1024/fp32" in table and "sam2.1-tiny@1024/fast: skipped: CUDA only" in table
    assert "official InferenceModel: skipped" in table and "failed: no codec" in table

    write_outputs(report, tmp_path, log=print)
    data = json.loads((tmp_path / "fps.json").read_text())
    assert (
        data["schema"] == R.SCHEMA and data["settings"]["window"] == 7 and data["settings"]["device"] == "cpu"
    )
    assert data["results"][0]["latency_ms"]["frame"]["median"] == 1400.0
    assert data["peers"]["results"][0]["processing_size"] == [1024, 1024]
    assert data["files"] == {"json": "fps.json", "plot": "fps_vs_objects.png", "markdown": "fps.md"}
    assert (tmp_path / "fps_vs_objects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fps.md").read_text() == md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_official_outcome_from_the_baseline_json():
    s = {"n": 1, "median": 2.0, "min": 2.0, "max": 2.0, "p25": 2.0, "p75": 2.0, "mean": 2.0, "values": [2.0]}
    data = {
        "what": "InferenceModel.forward",
        "device": "GPU",
        "results": [{"min_dim": 480, "objects": 1, "frames": 9, "padded_size": [480, 864], "fps": s,
                     "clip_ms_cuda_events": s, "memory": {"host_peak_rss_mib": 1.0}}],
    }  # fmt: skip
    out = R.OfficialOutcome.from_json(data)
    assert out.status == "measured" and out.results[0].fps.median == 2.0 and out.device == "GPU"


def _end_to_end(report: R.Report) -> R.EndToEndOutcome:
    mem = R.MemoryPeak(900.0, 5.0, "VmHWM after clear_refs")
    warm = R.StartupRun({"python": 0.05, "import torch": 1.2, "model": 0.8}, 2.1, 2.6, 16, 5.0)
    result = R.EndToEndResult(
        backend="torch", precision="fp32", min_dim=480, objects=1, frames=300, chunk=16,
        input_size=[480, 854], padded_size=[480, 864], overlay=True, fps=_stat([0.66, 0.7]),
        model_only_fps=_stat([0.7, 0.72]), ratio=_stat([0.94, 0.97]), stage_share=_stat([0.9]),
        stage_method="perf_counter", first_mask_s=_stat([20.0]), cpu_seconds_per_wall_second=_stat([1.9]),
        peak_frames_in_flight=40, load_average=R.LoadAverage(None, None), memory=mem,
        startup=R.StartupResult("measured", ["clip.mp4"], first=warm, warm=warm),
    )  # fmt: skip
    return R.EndToEndOutcome(
        clip="300 frames", results=[result], failures={"onnxruntime at min_dim 720": "boom"}
    )


def test_end_to_end_results_reach_the_json_the_tables_and_the_plot(tmp_path):
    report = _report()
    report.end_to_end = _end_to_end(report)
    assert [r.system for r in report.rows()][-1] == "torch end-to-end"
    md = format_markdown(report)
    assert "| torch | 480 | 1 | 300 | 0.68 (0.66-0.70) | 0.71 (0.70-0.72) | 0.95 (0.94-0.97) | 0.90 |" in md
    assert "| torch | 480 | 2.10, 2.10 | 2.60, 2.60 | python 0.05, import torch 1.20, model 0.80 |" in md
    assert "onnxruntime at min_dim 720: boom" in md
    table = format_table(report)
    assert "end to end: hodor-run's path" in table and "0.95 [0.94-0.97]" in table
    write_outputs(report, tmp_path, log=print)
    data = json.loads((tmp_path / "fps.json").read_text())
    e2e = data["end_to_end"]["results"][0]
    assert e2e["ratio"]["median"] == pytest.approx(0.955) and e2e["startup"]["warm"]["startup_s"] == 2.1
    assert (tmp_path / "fps_vs_objects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_options_and_plan():
    args = fps.parse_args(["--quick"])
    assert (args.e2e_frames, args.e2e_repeats, args.e2e_objects, args.startup_frames) == (12, 1, 2, 4)
    args = fps.parse_args(["--e2e-frames", "0"])
    assert args.e2e_frames == 0 and args.e2e_objects == 4 and args.startup_frames == 16
    plan = make_plan(["torch"], [], {}, _settings(e2e_frames=10, e2e_repeats=2, e2e_objects=2), CPU, 2, True)
    assert plan.systems[0].frames == 2 * (8 + 3 * 3) + 2 * 2 * 10  # grid, then e2e and model-only runs
    assert "end to end" in plan.text()
