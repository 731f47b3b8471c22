#!/usr/bin/env python
"""int8 on the CPU, tried: the export's graphs quantized (QDQ) and run by OpenVINO, against fp32.

    python benchmarks/cpu_int8.py                    # 480p, 4 objects, window 7
    python benchmarks/cpu_int8.py --repeats 7 --json int8.json

Not a backend: this measures whether an int8 precision would be worth offering, and at what
error. In one process:

1. The random-weight model and its export of ``cpu_backends.py`` (cached under ``--cache-dir``);
   the plain PyTorch model runs ``window + 2 + --calibration-frames`` frames of the synthetic clip,
   and the backbone and decode calls of the last ``--calibration-frames`` + 1 frames are recorded
   (``cpu_backends.Recorder``).
2. Static quantization with ONNX Runtime's tool (``onnxruntime.quantization.quantize_static``,
   QDQ format, u8 activations, per-channel s8 weights, min-max ranges), calibrated on the calls of
   the ``--calibration-frames`` frames before the last (the ring full). Backbone: every MatMul and
   Conv. Decoder: the convolutions with 64 or more output channels (the 1/4 map's convolutions);
   the sampling-offset convolutions and every product with the descriptors stay fp32.
3. OpenVINO compiles the fp32 and the int8 graphs (latency hint, one thread per usable core);
   ``--repeats`` interleaved rounds time each stage on the last frame's recorded inputs (a frame
   not in the calibration set), and the relative error ``max |out - ref| / max |ref|`` against
   the PyTorch fp32 outputs is reported.

Random weights make the error a statement about the arithmetic, not about masks: trained weights
have other activation ranges, and their error would have to be measured on real videos.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from a checkout, or loaded by path
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import cpu_backends  # noqa: E402  (its model, clip and recorder)
from hodor.engine.backends.onnxruntime_backend import usable_cores  # noqa: E402
from hodor.kernels.testing import relative_error  # noqa: E402

STAGES = ("backbone", "decoder")
SEAM_NAMES = {"backbone": "backbone", "decoder": "decode"}  # graph file -> the backend's call
INPUTS = {
    "backbone": ("images",),
    "decoder": ("f4", "f8", "fg_hist", "bg_hist", "fg_invalid", "bg_invalid"),
}


def _joined(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """A stage's outputs as one flat tensor (the backbone's two feature maps together)."""
    return torch.cat([o.flatten() for o in outputs])


def _feeds(stage: str, args: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: a.numpy() for name, a in zip(INPUTS[stage], args, strict=True)}


def quantize(source: Path, target: Path, stage: str, calibration: list[dict[str, np.ndarray]]) -> int:
    """QDQ int8 copy of ``source``; returns the number of nodes quantized."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {init.name: init for init in graph.initializer}
    if stage == "backbone":
        nodes = [n.name for n in graph.node if n.op_type in ("MatMul", "Conv")]
    else:
        nodes = [
            n.name
            for n in graph.node
            if n.op_type == "Conv" and n.input[1] in weights and weights[n.input[1]].dims[0] >= 64
        ]
    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_quantize=nodes,
    )
    return len(nodes)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cpu_backends.add_clip_options(p)
    p.add_argument("--calibration-frames", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    cpu_backends.add_model_options(p)
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    if (args.checkpoint is None) != (args.export is None):
        p.error("--checkpoint and --export go together")
    if args.calibration_frames < 1 or args.repeats < 1:
        p.error("--calibration-frames and --repeats must be >= 1")
    try:
        import onnxruntime.quantization  # noqa: F401
        import openvino as ov
    except ImportError as exc:
        print(f"error: {exc.name} is not installed (pip install hodor-engine[openvino])", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    model = cpu_backends.open_model(args, log)
    frames = args.window + 2 + args.calibration_frames
    recorded = args.calibration_frames + 1
    clip = cpu_backends.Clip(args.min_dim, args.objects, frames=frames)
    from hodor.engine.loop.session import VideoSession

    recorder = cpu_backends.Recorder(cpu_backends.reference_backend(model))
    session = VideoSession(recorder, temporal_window=args.window)
    log(f"PyTorch fp32 over {frames} frames (the last {recorded} recorded)")
    calls: dict[str, list[cpu_backends.StageCall]] = {stage: [] for stage in STAGES}
    for t in range(frames):
        session.step(clip.frame(t), clip.reference if t == 0 else None)
        if t >= frames - recorded:  # every stage called this frame (the ring is full)
            for stage, seam_name in SEAM_NAMES.items():
                calls[stage].append(recorder.calls[seam_name])

    core = ov.Core()
    properties = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": usable_cores(),
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled: dict[str, dict[str, Any]] = {}
    evaluation: dict[str, tuple[dict[str, np.ndarray], torch.Tensor]] = {}
    quantized_nodes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="hodor-int8-") as tmp:
        for stage in STAGES:
            *calibrating, last = calls[stage]
            calibration = [_feeds(stage, call.args) for call in calibrating]
            evaluation[stage] = (_feeds(stage, last.args), _joined(last.outputs))
            source = model.export_dir / f"{stage}.onnx"
            target = Path(tmp) / f"{stage}.int8.onnx"
            log(f"{stage}: quantizing, calibrated on {len(calibration)} frames")
            quantized_nodes[stage] = quantize(source, target, stage, calibration)
            compiled[stage] = {
                "fp32": core.compile_model(core.read_model(str(source)), "CPU", properties),
                "int8": core.compile_model(core.read_model(str(target)), "CPU", properties),
            }

    ms: dict[str, dict[str, list[float]]] = {s: {"fp32": [], "int8": []} for s in STAGES}
    errors: dict[str, dict[str, float]] = {s: {} for s in STAGES}
    requests = {s: {k: c.create_infer_request() for k, c in compiled[s].items()} for s in STAGES}
    for stage in STAGES:
        feeds, want = evaluation[stage]
        for kind, request in requests[stage].items():
            got = _joined([torch.from_numpy(np.array(v)) for v in request.infer(feeds).values()])
            finite = torch.isfinite(want)
            errors[stage][kind] = relative_error(got[finite], want[finite])
    log(f"{args.repeats} interleaved rounds")
    for _ in range(args.repeats):
        for stage in STAGES:
            feeds = evaluation[stage][0]
            for kind, request in requests[stage].items():
                start = time.perf_counter()
                request.infer(feeds)
                ms[stage][kind].append(1e3 * (time.perf_counter() - start))

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"

    lines = [
        f"int8 (QDQ, OpenVINO) against fp32 (OpenVINO) at min_dim {args.min_dim}, {args.objects} objects, "
        f"window {args.window}; {args.repeats} interleaved rounds; relative error against PyTorch fp32 on a "
        "frame outside the calibration set",
        "",
        "| stage | nodes quantized | fp32 ms | int8 ms | fp32 / int8 (median of rounds) | "
        "rel err fp32 | rel err int8 |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for stage in STAGES:
        ratios = [a / b for a, b in zip(ms[stage]["fp32"], ms[stage]["int8"], strict=True)]
        lines.append(
            f"| {stage} | {quantized_nodes[stage]} | {spread(ms[stage]['fp32'])} | "
            f"{spread(ms[stage]['int8'])} | "
            f"{statistics.median(ratios):.2f} | {errors[stage]['fp32']:.1e} | {errors[stage]['int8']:.1e} |"
        )
    print("\n".join(lines))
    if args.json is not None:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        report = {"settings": settings,
                  "ms": ms, "rel_err": errors, "quantized_nodes": quantized_nodes}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
