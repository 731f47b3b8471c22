#!/usr/bin/env python
"""How fast the network's arithmetic can possibly run on this CPU: the floor under every CPU backend.

    python benchmarks/cpu_floor.py                   # the machine's attained GEMM rates, alone
    python benchmarks/cpu_backends.py --floor        # the same, beside the backends, in one run

Two measurements, both made here and now:

1. **Arithmetic per stage.** The plain PyTorch model's backbone, encode and decode calls of one
   frame run under ``torch.utils.flop_counter.FlopCounterMode``, which counts the multiply-adds of
   matrix products and convolutions (the deformable convolution's product, the attention products,
   every linear layer and convolution); element-wise work, normalisation, soft-max and the
   deformable convolution's sampling are not counted, so the count is a lower bound on the work.
2. **Attained rates.** Products of the model's own shapes and one large square product, each run by
   ONNX Runtime (fp32, the CPU backends' default engine, one thread per usable core) and by PyTorch
   (fp32, bf16 where the CPU computes it natively), and an int8 product (ONNX Runtime's
   ``MatMulInteger``, u8 x s8); the best median over ``--repeats`` runs of each precision is that
   precision's *attained peak* here.

The floor of a stage is its counted arithmetic at the attained peak: no backend can run the stage
faster without doing less arithmetic (another algorithm, such as Winograd convolutions) or using a
narrower number type. ``cpu_backends.py --floor`` sets the whole frame's floor beside the baseline's
measured frame time in the same run; their quotient bounds the speed-up any backend can reach at
that precision, even one that made every other operation (sampling, normalisation, the runtime's
resampling and arg-max) free. The OpenVINO backend's fp32 stages do less arithmetic: they run the
dense 3x3 convolutions as Winograd F(6x6, 3x3), 64 multiplications for 36 outputs instead of 324
(:func:`winograd_flops` counts them), so the report also gives the fp32 floor and bound with those
products at that fraction (the transforms around them not counted: a floor still).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout

from hodor.engine.backends.openvino_backend import FP32_WINOGRAD_TILE  # noqa: E402  (no OpenVINO needed)

STAGES = ("backbone", "encode", "decode")


@dataclass
class Probe:
    """One product timed: its arithmetic and the median rate over the repeats."""

    name: str
    precision: str  # fp32, bf16 or int8
    engine: str  # onnxruntime or torch
    gflop: float
    ms: list[float]

    @property
    def gflops_per_s(self) -> float:
        return self.gflop / (statistics.median(self.ms) / 1e3)


# --------------------------------------------------------------------------------------------------
# Arithmetic per stage


def stage_flops(backend: Any, calls: dict[str, Any]) -> dict[str, float]:
    """Floating-point operations (2 per multiply-add) of each stage's recorded call on ``backend``
    (the plain PyTorch model), counted by PyTorch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    flops: dict[str, float] = {}
    for stage in STAGES:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            getattr(backend, stage)(*calls[stage].args)
        flops[stage] = float(counter.get_total_flops())
    return flops


WINOGRAD_FRACTION = (FP32_WINOGRAD_TILE + 2) ** 2 / (9 * FP32_WINOGRAD_TILE**2)
"""The fraction of a dense 3x3 convolution's multiplications its fp32 Winograd makes: F(m x m, 3x3)
computes m^2 outputs with (m + 2)^2 instead of 9 m^2 (64 / 324 for m = 6)."""


def winograd_flops(backend: Any, calls: dict[str, Any]) -> dict[str, float]:
    """Of :func:`stage_flops`' count, the dense 3x3 convolutions' (stride 1, padding 1, no dilation
    or groups, at least ``MIN_CHANNELS`` in and out): those the OpenVINO backend's fp32 stages run
    as Winograd F(6x6, 3x3) (:data:`WINOGRAD_FRACTION` of the multiplications)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hodor.engine.backends.winograd_conv import MIN_CHANNELS

    class Dense3x3(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.flops = 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default):
                bound = func._schema.arguments
                given = {a.name: a.default_value for a in bound if a.has_default_value()}
                given.update(zip((a.name for a in bound), args, strict=False))
                given.update(kwargs or {})
                if _dense_3x3(given, MIN_CHANNELS):
                    self.flops += 2.0 * out.numel() * given["input"].shape[1] * 9
            return out

    flops: dict[str, float] = {}
    for stage in STAGES:
        mode = Dense3x3()
        with mode, torch.inference_mode():
            getattr(backend, stage)(*calls[stage].args)
        flops[stage] = mode.flops
    return flops


def _dense_3x3(conv: dict[str, Any], min_channels: int) -> bool:
    """Whether a convolution's arguments (by name, as ``aten.conv2d`` / ``aten.convolution`` take
    them) are those of a convolution the Winograd rewrite takes."""

    def pair(value: Any) -> list[Any]:
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        return value * 2 if len(value) == 1 else value

    weight = conv["weight"]
    return (
        weight.dim() == 4
        and tuple(weight.shape[2:]) == (3, 3)
        and pair(conv["stride"]) == [1, 1]
        and pair(conv["padding"]) == [1, 1]
        and pair(conv["dilation"]) == [1, 1]
        and not conv.get("transposed", False)
        and conv["groups"] == 1
        and min(weight.shape[:2]) >= min_channels
    )


# --------------------------------------------------------------------------------------------------
# Attained rates


def _times_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def _graph(op: str, x: Any, weight: np.ndarray, out_type: int, **attrs: Any) -> Any:
    """A one-node ONNX model ``y = op(x, w)`` with ``w`` a constant and ``x`` a float/int input."""
    import onnx
    from onnx import helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    out_shape = list(x.shape[:-1]) + [weight.shape[-1]] if op != "Conv" else list(x.shape)
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)],
        "probe",
        [helper.make_tensor_value_info("x", elem, list(x.shape))],
        [helper.make_tensor_value_info("y", out_type, out_shape)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


def _run_ort(model: Any, x: np.ndarray, threads: int, repeats: int) -> list[float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _times_ms(lambda: session.run(None, {"x": x}), repeats)


def _run_openvino(model: Any, x: np.ndarray, threads: int, repeats: int, precision: str) -> list[float]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model.SerializeToString()),
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
        },
    )
    request = compiled.create_infer_request()
    return _times_ms(lambda: request.infer({0: x}, share_inputs=True), repeats)


def _torch_matmul(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> list[float]:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    with torch.inference_mode():
        return _times_ms(lambda: torch.matmul(a, b), repeats)


def measure_probes(
    padded: tuple[int, int],
    repeats: int,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    square_size: int = 2048,
) -> tuple[list[Probe], dict[str, str]]:
    """The attained rates: products of the model's shapes at ``padded`` (the network's input size)
    and one ``square_size``-cube product, per precision. Returns the probes and what could not run,
    with why."""
    from hodor.engine.backends.onnxruntime_backend import usable_cores

    threads = threads or usable_cores()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    h4, w4 = padded[0] // 4, padded[1] // 4
    h8, w8 = padded[0] // 8, padded[1] // 8
    c = 256
    probes: list[Probe] = []
    skipped: dict[str, str] = {}

    def add(name: str, precision: str, engine: str, gflop: float, run: Callable[[], list[float]]) -> None:
        try:
            ms = run()
        except ImportError as exc:
            skipped[f"{name} ({engine}, {precision})"] = f"not installed: {exc.name}"
            return
        except Exception as exc:  # an engine that cannot run this product here: said, not hidden
            skipped[f"{name} ({engine}, {precision})"] = " ".join(str(exc).split())[:200]
            return
        probe = Probe(name, precision, engine, gflop, ms)
        probes.append(probe)
        log(f"  {name:44s} {engine:11s} {precision:4s} {probe.gflops_per_s:7.1f} GFLOP/s")

    from onnx import TensorProto

    deform = (h8 * w8, 9 * c, c)  # the deformable convolution's product at 1/8
    square = (square_size, square_size, square_size)
    conv_x = rng.standard_normal((1, c, h4, w4), dtype=np.float32)
    conv = _graph(
        "Conv",
        conv_x,
        (rng.standard_normal((c, c, 3, 3)) / 48).astype(np.float32),
        TensorProto.FLOAT,
        pads=[1, 1, 1, 1],
    )
    conv_name, conv_gflop = f"3x3 conv {c}->{c} at 1/4 ({h4}x{w4})", 2 * h4 * w4 * c * c * 9 / 1e9
    deform_x = rng.standard_normal(deform[:2], dtype=np.float32)
    deform_model = _graph(
        "MatMul", deform_x, rng.standard_normal(deform[1:], dtype=np.float32), TensorProto.FLOAT
    )
    deform_name, deform_gflop = (
        f"deformable-conv product {deform[0]}x{deform[1]}x{deform[2]}",
        2 * np.prod(deform) / 1e9,
    )
    square_x = rng.standard_normal(square[:2], dtype=np.float32)
    square_model = _graph(
        "MatMul", square_x, rng.standard_normal(square[1:], dtype=np.float32), TensorProto.FLOAT
    )
    square_name, square_gflop = f"square product {square_size}^3", 2 * np.prod(square) / 1e9
    int8_x = rng.integers(0, 256, square[:2], dtype=np.uint8)
    int8_model = _graph(
        "MatMulInteger", int8_x, rng.integers(-127, 128, square[1:], dtype=np.int8), TensorProto.INT32
    )

    fp32_products = (
        (conv_name, conv_gflop, conv, conv_x),
        (deform_name, deform_gflop, deform_model, deform_x),
        (square_name, square_gflop, square_model, square_x),
    )
    for name, gflop, model, x in fp32_products:
        add(name, "fp32", "onnxruntime", gflop, lambda m=model, x=x: _run_ort(m, x, threads, repeats))
    add(
        square_name,
        "int8",
        "onnxruntime",
        square_gflop,
        lambda: _run_ort(int8_model, int8_x, threads, repeats),
    )
    from hodor.engine.backends.torch_backend import cpu_supports_bf16

    bf16 = cpu_supports_bf16()
    if not bf16:
        skipped["bf16 probes"] = "this CPU has no native bf16 (AVX-512 BF16 or AMX)"
    for name, gflop, model, x in fp32_products:
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            add(
                name,
                precision,
                "openvino",
                gflop,
                lambda m=model, x=x, p=precision: _run_openvino(m, x, threads, repeats, p),
            )
    add(square_name, "fp32", "torch", square_gflop, lambda: _torch_matmul(*square, torch.float32, repeats))
    if bf16:
        add(
            square_name,
            "bf16",
            "torch",
            square_gflop,
            lambda: _torch_matmul(*square, torch.bfloat16, repeats),
        )
    torch.set_num_threads(torch_threads)
    return probes, skipped


def attained_peaks(probes: Sequence[Probe]) -> dict[str, float]:
    """Best median rate per precision, GFLOP/s."""
    peaks: dict[str, float] = {}
    for probe in probes:
        peaks[probe.precision] = max(peaks.get(probe.precision, 0.0), probe.gflops_per_s)
    return peaks


# --------------------------------------------------------------------------------------------------
# Report


def floor_section(
    flops: dict[str, float],
    probes: Sequence[Probe],
    skipped: dict[str, str],
    baseline: str | None = None,
    baseline_stage_ms: dict[str, float] | None = None,
    baseline_frame_ms: float | None = None,
    winograd: dict[str, float] | None = None,
) -> str:
    """Markdown: the probes, the floors per stage and precision, and (given the baseline's measured
    times from the same run) the bound on any backend's speed-up over it; with ``winograd`` (the
    :func:`winograd_flops` of each stage), also the fp32 floor and bound with those convolutions'
    multiplications at :data:`WINOGRAD_FRACTION` (their transforms not counted)."""
    peaks = attained_peaks(probes)
    lines = [
        "Attained rates (median of the repeats; one thread per usable core):",
        "",
        "| product | engine | precision | GFLOP | GFLOP/s |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for p in probes:
        lines.append(f"| {p.name} | {p.engine} | {p.precision} | {p.gflop:.2f} | {p.gflops_per_s:.1f} |")
    for what, why in skipped.items():
        lines.append(f"\nnot measured: {what}: {why}")
    total = sum(flops.values())
    lines += [
        "",
        "Counted arithmetic (products and convolutions only), its floor at each precision's attained peak:",
        "",
        "| stage | GFLOP | "
        + " | ".join(f"floor ms at {k} ({v:.0f} GFLOP/s)" for k, v in peaks.items())
        + (f" | {baseline} ms | its rate GFLOP/s |" if baseline_stage_ms else " |"),
        "| --- | ---: | "
        + " | ".join("---:" for _ in peaks)
        + (" | ---: | ---: |" if baseline_stage_ms else " |"),
    ]
    for stage in STAGES:
        row = f"| {stage} | {flops[stage] / 1e9:.1f} | " + " | ".join(
            f"{flops[stage] / 1e9 / v * 1e3:.0f}" for v in peaks.values()
        )
        if baseline_stage_ms:
            ms = baseline_stage_ms[stage]
            row += f" | {ms:.0f} | {flops[stage] / 1e9 / (ms / 1e3):.0f}"
        lines.append(row + " |")
    row = f"| frame (three stages) | {total / 1e9:.1f} | " + " | ".join(
        f"{total / 1e9 / v * 1e3:.0f}" for v in peaks.values()
    )
    if baseline_stage_ms:
        ms = sum(baseline_stage_ms.values())
        row += f" | {ms:.0f} | {total / 1e9 / (ms / 1e3):.0f}"
    lines.append(row + " |")
    if baseline_frame_ms is not None:
        lines += [
            "",
            f"Bound on any backend's whole-step speed-up over {baseline} ({baseline_frame_ms:.0f} ms "
            "a frame in this run), every operation but the counted products taken as free:",
            "",
        ]
        for precision, peak in peaks.items():
            floor_ms = total / 1e9 / peak * 1e3
            lines.append(
                f"- {precision}: at most {baseline_frame_ms / floor_ms:.2f}x (floor {floor_ms:.0f} ms)"
            )
    if winograd is not None and "fp32" in peaks:
        dense = sum(winograd.values())
        fewer = total - (1.0 - WINOGRAD_FRACTION) * dense
        floor_ms = fewer / 1e9 / peaks["fp32"] * 1e3
        line = (
            f"\nWith the dense 3x3 convolutions ({dense / 1e9:.1f} of the {total / 1e9:.1f} GFLOP) "
            f"as Winograd F({FP32_WINOGRAD_TILE}x{FP32_WINOGRAD_TILE}, 3x3), as the OpenVINO backend "
            "runs them in fp32, the products are "
            f"{fewer / 1e9:.1f} GFLOP (their transforms not counted): fp32 floor {floor_ms:.0f} ms"
        )
        if baseline_frame_ms is not None:
            line += f", at most {baseline_frame_ms / floor_ms:.2f}x {baseline}"
        lines.append(line + ".")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-dim", type=int, default=480, help="sets the model-shaped products' size")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, help="default: one per usable core")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    from hodor.config import parse_config, with_dims
    from hodor.engine.loop.preprocess import frame_geometry

    cfg = with_dims(parse_config({}), args.min_dim, None)
    width = 2 * round(args.min_dim * 8 / 9)  # 16:9, as cpu_backends.py's clip
    geometry = frame_geometry(args.min_dim, width, cfg.input.min_dim, cfg.input.max_dim)
    padded = (geometry.padded_height, geometry.padded_width)
    print(f"attained rates at the shapes of a {args.min_dim}x{width} frame (padded {padded[0]}x{padded[1]}):")
    probes, skipped = measure_probes(padded, args.repeats, args.threads)
    print(floor_section({s: 0.0 for s in STAGES}, probes, skipped).split("\n\nCounted")[0])
    if args.json is not None:
        args.json.write_text(
            json.dumps({"probes": [asdict(p) for p in probes], "skipped": skipped}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
