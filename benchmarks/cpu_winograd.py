#!/usr/bin/env python
"""The model's dense 3x3 convolutions on the CPU, direct and as Winograd.

    python benchmarks/cpu_winograd.py                  # 480p shapes, 7 interleaved rounds
    python benchmarks/cpu_winograd.py --min-dim 360 --repeats 9

Every 3x3 convolution a frame runs is counted: the backbone's two FPN output convolutions (1/4
and 1/8), the decoder's ``conv_4x`` and catch-all convolution (1/4) and the offsets convolution
of each deformable layer (1/8, 18 channels). Each is run at the shape of a 16:9 frame whose short
side is ``--min-dim`` (the engine's resize and padding), with random input and weights (a
trained layer's scale), these ways:

- ``direct``: one ``Conv`` node, what the export holds;
- ``graph F(4x4)``: that node rewritten as Winograd F(4x4, 3x3) in plain graph operations by
  :func:`hodor.engine.backends.winograd_conv.rewrite_winograd_convs` (what the OpenVINO backend
  runs in fp32 where the engine's operations cannot be built): 4x fewer multiplications in the
  product, more memory traffic around it;
- through the engine's OpenVINO operations
  (:func:`hodor.engine.backends.winograd_conv.rewrite_winograd_ops`, channels last), where they
  build: ``ops F(6x6)`` in fp32 (the fp32 stages' form) and ``ops F(4x4)`` (their form before),
  ``ops F(3x3)`` (the bf16 stages' form) and ``ops F(2x2)`` in bf16.

Here every convolution is rewritten, the narrow ones too. ``direct`` and ``graph F(4x4)`` run in
ONNX Runtime (fp32) and OpenVINO (fp32, and with the bf16 inference hint where the CPU has
bf16); the operations' forms in OpenVINO at their precision. ``--repeats`` interleaved timed
calls after 2 warm-up calls, median (min-max), one thread per usable core; every output is
checked against ``torch.nn.functional.conv2d`` in float64 (relative norm of the difference).
The summary weighs each convolution by how often a frame runs it. No GPU is used; OpenVINO is
optional (``pip install 'hodor-engine[openvino]'``).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from a checkout, or loaded by path
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from cpu_deform import relative_error_float64  # noqa: E402
from hodor.config import official_defaults, parse_config, with_dims  # noqa: E402
from hodor.engine.backends.onnxruntime_backend import usable_cores  # noqa: E402
from hodor.engine.backends.winograd_conv import rewrite_winograd_convs, rewrite_winograd_ops  # noqa: E402
from hodor.engine.loop.preprocess import frame_geometry  # noqa: E402


@dataclass(frozen=True)
class ConvShape:
    """One of the model's 3x3 convolutions: where, channels, map size, how often a frame runs it."""

    name: str
    in_ch: int
    out_ch: int
    height: int
    width: int
    per_frame: int
    bias: bool

    @property
    def gflop(self) -> float:
        return 2 * 9 * self.in_ch * self.out_ch * self.height * self.width / 1e9


def model_convs(min_dim: int) -> list[ConvShape]:
    """The dense 3x3 convolutions of one frame at ``min_dim`` (a 16:9 frame, the default config)."""
    cfg = with_dims(parse_config(official_defaults()), min_dim, None)
    geometry = frame_geometry(min_dim, 2 * round(min_dim * 8 / 9), cfg.input.min_dim, cfg.input.max_dim)
    h4, w4 = geometry.at_stride(4)
    h8, w8 = geometry.at_stride(8)
    return [
        ConvShape("backbone FPN 1/4", 256, 256, h4, w4, 1, True),
        ConvShape("backbone FPN 1/8", 256, 256, h8, w8, 1, True),
        ConvShape("decoder conv_4x", 256, 256, h4, w4, 1, False),
        ConvShape("decoder catch-all", 256, 128, h4, w4, 1, False),
        ConvShape("decoder offsets", 256, 18, h8, w8, cfg.model.decoder_layers, True),
    ]


GRAPH_WAYS = ("direct", "graph F(4x4)")
"""The ways every engine runs."""
OPS_WAYS = {
    "ops F(6x6)": ("openvino fp32", 6),
    "ops F(4x4)": ("openvino fp32", 4),
    "ops F(3x3)": ("openvino bf16", 3),
    "ops F(2x2)": ("openvino bf16", 2),
}
"""The ways through the engine's operations: the engine (OpenVINO at a precision) and the tile."""


def _exported(conv: nn.Conv2d, x: Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _graphs(conv: nn.Conv2d, x: Tensor, with_ops: bool) -> dict[str, bytes]:
    """The convolution exported (fixed shapes), as it is and with each Winograd rewrite (those
    through the engine's operations when ``with_ops``)."""
    direct = _exported(conv, x)
    graphs = {"direct": direct.SerializeToString()}
    model = onnx.ModelProto()
    model.CopyFrom(direct)
    if rewrite_winograd_convs(model, min_channels=1) != 1:
        raise RuntimeError(f"the rewrite did not take the convolution {conv}")
    graphs["graph F(4x4)"] = model.SerializeToString()
    for way, (engine, tile) in OPS_WAYS.items() if with_ops else ():
        model = onnx.ModelProto()
        model.CopyFrom(direct)
        if rewrite_winograd_ops(model, tile=tile, bf16=engine.endswith("bf16"), min_channels=1) != 1:
            raise RuntimeError(f"the rewrite did not take the convolution {conv}")
        graphs[way] = model.SerializeToString()
    return graphs


def _ops_library(log: Callable[[str], None]) -> str | None:
    """The engine's OpenVINO operations (built on first use), or None where they cannot be."""
    try:
        from hodor.engine.backends.openvino_ops import ExtensionUnavailable, extension_library
    except ImportError:
        return None
    try:
        return str(extension_library())
    except ExtensionUnavailable as exc:
        log(f"the engine's operations are unavailable ({exc}): their ways are left out")
        return None


def _runners(way: str, graph: bytes, x: np.ndarray, library: str | None) -> dict[str, Callable[[], Any]]:
    """Engine -> a call running ``graph`` (the convolution ``way``) on ``x``."""
    threads = usable_cores()
    runners: dict[str, Callable[[], Any]] = {}
    if way in GRAPH_WAYS:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        runners["onnxruntime fp32"] = lambda: session.run(None, {"x": x})[0]
    try:
        import openvino as ov
    except ImportError:
        return runners
    core = ov.Core()
    if way in OPS_WAYS:
        core.add_extension(library)
    model = core.read_model(graph, b"")
    for label, hint in (("openvino fp32", "f32"), ("openvino bf16", "bf16")):
        if way in OPS_WAYS and OPS_WAYS[way][0] != label:
            continue
        if hint == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            continue
        request = core.compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint}
        ).create_infer_request()
        runners[label] = lambda request=request: request.infer({"x": x})[0]
    return runners


@dataclass
class Row:
    """One convolution on one engine: the ways it ran there (``direct`` first)."""

    conv: ConvShape
    engine: str
    ms: dict[str, list[float]]  # way -> timed calls
    error: dict[str, float]  # way -> relative error against float64

    def median(self, way: str) -> float:
        return statistics.median(self.ms[way])


def compare(min_dim: int, repeats: int, log: Callable[[str], None]) -> list[Row]:
    """Time and check every convolution of :func:`model_convs` both ways on every engine."""
    rows: list[Row] = []
    gen = torch.Generator().manual_seed(0)
    library = _ops_library(log)
    with torch.inference_mode():
        for shape in model_convs(min_dim):
            conv = nn.Conv2d(shape.in_ch, shape.out_ch, 3, padding=1, bias=shape.bias)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (3 * shape.in_ch**0.5))
                if conv.bias is not None:
                    conv.bias.copy_(torch.randn(shape.out_ch, generator=gen) / 10)
            x = torch.randn(1, shape.in_ch, shape.height, shape.width, generator=gen)
            bias = conv.bias.double() if conv.bias is not None else None
            want = F.conv2d(x.double(), conv.weight.double(), bias, padding=1)
            graphs = _graphs(conv, x, library is not None)
            ways = {way: _runners(way, graph, x.numpy(), library) for way, graph in graphs.items()}
            engines = list(ways["direct"])
            errors: dict[str, dict[str, float]] = defaultdict(dict)
            times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for engine in engines:
                for way, runners in ways.items():
                    if engine in runners:
                        errors[engine][way] = relative_error_float64(runners[engine](), want)
                        runners[engine]()
            for _ in range(repeats):
                for engine in engines:
                    for way, runners in ways.items():
                        if engine in runners:
                            start = time.perf_counter()
                            runners[engine]()
                            times[engine][way].append(1e3 * (time.perf_counter() - start))
            for engine in engines:
                rows.append(Row(shape, engine, dict(times[engine]), errors[engine]))
            log(f"{shape.name}: {shape.in_ch}->{shape.out_ch} at {shape.height}x{shape.width} done")
    return rows


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def report(rows: list[Row], min_dim: int, repeats: int) -> list[str]:
    lines = [
        f"The model's 3x3 convolutions at min_dim {min_dim}, direct and as Winograd; "
        f"{usable_cores()} threads, {repeats} interleaved rounds, median (min-max) ms; "
        "relative error against float64",
        "",
        "| convolution | per frame | GFLOP | engine | way | ms | direct / way | error |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        c = r.conv
        for way in r.ms:
            lines.append(
                f"| {c.name} {c.in_ch}->{c.out_ch} at {c.height}x{c.width} | {c.per_frame} | {c.gflop:.1f} "
                f"| {r.engine} | {way} | {_spread(r.ms[way])} | {r.median('direct') / r.median(way):.2f} "
                f"| {r.error[way]:.1e} |"
            )
    lines += [
        "",
        "A frame's 3x3 convolutions per engine and way (each weighed by how often a frame runs it; "
        "medians; with a Winograd way only where it is faster than direct):",
        "",
        "| engine | way | ms | only where faster, ms | saved ms a frame against direct | worst error |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    by_engine: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_engine[r.engine].append(r)
    for engine, group in by_engine.items():
        direct = sum(r.conv.per_frame * r.median("direct") for r in group)
        for way in group[0].ms:
            total = sum(r.conv.per_frame * r.median(way) for r in group)
            best = sum(r.conv.per_frame * min(r.median("direct"), r.median(way)) for r in group)
            worst = max(r.error[way] for r in group)
            lines.append(
                f"| {engine} | {way} | {total:.1f} | {best:.1f} | {direct - best:.1f} | {worst:.1e} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-dim", type=int, default=480, help="short side of the 16:9 frame (default 480)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls of each way (default 7)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.min_dim < 32:
        p.error("--repeats must be >= 1 and --min-dim >= 32")
    torch.set_num_threads(usable_cores())
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    rows = compare(args.min_dim, args.repeats, log)
    print("\n".join(report(rows, args.min_dim, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
