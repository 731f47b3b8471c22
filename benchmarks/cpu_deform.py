#!/usr/bin/env python
"""The decoder's deformable convolution on the CPU, every way it can be run; and where OpenVINO
spends a frame's time, node by node.

    python benchmarks/cpu_deform.py                        # the ways, at the decoder's 480p shape
    python benchmarks/cpu_deform.py --profile bf16         # OpenVINO's per-node times, three stages

Ways (one deformable 3x3 convolution, 256 -> 256 channels, on the 1/8 map of a 16:9 frame whose
short side is ``--min-dim``; random input, offsets of a few pixels, weights), each timed
``--repeats`` times after 2 warm-up calls, interleaved, median (min-max), with one thread per
usable core, and checked against :func:`hodor.model.deform_conv.deform_conv2d` in float64:

- ``torch-grid`` / ``torch-gather``: the torch model's two samplings (``grid_sample``, the
  reference; ``embedding_bag`` over bilinear corners, the torch backend's on the CPU), fp32 and
  bf16;
- ``openvino-fused``: OpenVINO's own ``DeformableConvolution`` (what the OpenVINO backend runs),
  compiled with the fp32 and with the bf16 inference hint;
- ``openvino-grouped-columns``: the sampled columns made by a grouped (depthwise)
  ``DeformableConvolution`` with one-hot weights, then a bf16 1x1 convolution;
- ``openvino-gridsample-columns``: the columns made by ``GridSample`` from positions computed in
  fp32 outside the graph, then a bf16 1x1 convolution.
- ``openvino-engine-columns``: what the OpenVINO backend runs in bf16: the columns made by the
  engine's own operation (:mod:`hodor.engine.backends.deform_columns`, built here on first use),
  then a bf16 matrix product (left out, saying why, where the operation cannot be built).

``--profile PRECISION`` records one frame's stage inputs with the plain PyTorch model (as
``cpu_backends.py`` does), runs the three stages on the OpenVINO backend compiled with
``PERF_COUNT`` (in their steady state: fixed-shape compiles made) and prints each stage's time by
node type and kernel. OpenVINO is needed (``pip install 'hodor-engine[openvino]'``); no GPU is used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from a checkout, or loaded by path
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import cpu_backends  # noqa: E402  (its model, clip, recorder and reference)
from hodor.engine.backends.onnxruntime_backend import usable_cores  # noqa: E402
from hodor.model.deform_conv import deform_conv2d, deform_conv2d_gathered  # noqa: E402

CHANNELS = 256


def relative_error_float64(got: np.ndarray | torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||``, computed in float64 (``want`` is float64)."""
    got = torch.as_tensor(np.asarray(got, dtype=np.float64)) if not torch.is_tensor(got) else got.double()
    return float((got - want).norm() / want.norm())


def _openvino_ways(x: np.ndarray, offsets: np.ndarray, weight: np.ndarray) -> dict[str, Callable[[], Any]]:
    import openvino as ov
    import openvino.opset9 as ops

    _, c, h, w = x.shape
    out_ch = weight.shape[0]
    core = ov.Core()
    base = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": usable_cores()}

    def compiled(outputs: Any, params: list[Any], hint: str) -> Any:
        model = ov.Model(outputs, params)
        return core.compile_model(
            model, "CPU", {**base, "INFERENCE_PRECISION_HINT": hint}
        ).create_infer_request()

    def fused(hint: str) -> Callable[[], Any]:
        xp = ops.parameter([1, c, h, w], np.float32)
        op = ops.parameter([1, 18, h, w], np.float32)
        y = ops.deformable_convolution(
            xp, op, ops.constant(weight), [1, 1], [1, 1], [1, 1], [1, 1], bilinear_interpolation_pad=True
        )
        request = compiled([y], [xp, op], hint)
        return lambda: request.infer([x, offsets])[0]

    def grouped_columns() -> Callable[[], Any]:
        xp = ops.parameter([1, c, h, w], np.float32)
        op = ops.parameter([1, 18, h, w], np.float32)
        one_hot = np.zeros((c * 9, 1, 3, 3), np.float32)
        for tap in range(9):
            one_hot[tap::9, 0, tap // 3, tap % 3] = 1.0  # channel c*9+tap samples channel c at tap
        columns = ops.deformable_convolution(
            xp,
            op,
            ops.constant(one_hot),
            [1, 1],
            [1, 1],
            [1, 1],
            [1, 1],
            group=c,
            bilinear_interpolation_pad=True,
        )
        y = ops.convolution(
            columns, ops.constant(weight.reshape(out_ch, c * 9, 1, 1)), [1, 1], [0, 0], [0, 0], [1, 1]
        )
        request = compiled([y], [xp, op], "bf16")
        return lambda: request.infer([x, offsets])[0]

    def gridsample_columns() -> Callable[[], Any]:
        # Positions as grid_sample's normalised coordinates, taps side by side along the width.
        taps = offsets.reshape(9, 2, h, w)
        rows = np.arange(h, dtype=np.float32)[:, None]
        cols = np.arange(w, dtype=np.float32)[None, :]
        grid = np.empty((1, h, 9 * w, 2), np.float32)
        for tap in range(9):
            py = rows + (tap // 3 - 1) + taps[tap, 0]
            px = cols + (tap % 3 - 1) + taps[tap, 1]
            grid[0, :, tap::9, 0] = (2 * px + 1) / w - 1
            grid[0, :, tap::9, 1] = (2 * py + 1) / h - 1
        xp = ops.parameter([1, c, h, w], np.float32)
        gp = ops.parameter([1, h, 9 * w, 2], np.float32)
        sampled = ops.grid_sample(
            xp, gp, {"align_corners": False, "mode": "bilinear", "padding_mode": "zeros"}
        )
        # [1, C, H, W*9] -> [1, C*9, H, W]: channel-major, tap-minor, as the weight's flattening.
        columns = ops.reshape(
            ops.transpose(ops.reshape(sampled, [1, c, h, w, 9], False), [0, 1, 4, 2, 3]),
            [1, c * 9, h, w],
            False,
        )
        y = ops.convolution(
            columns, ops.constant(weight.reshape(out_ch, c * 9, 1, 1)), [1, 1], [0, 0], [0, 0], [1, 1]
        )
        request = compiled([y], [xp, gp], "bf16")
        return lambda: request.infer([x, grid])[0]

    def engine_columns() -> Callable[[], Any]:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from hodor.engine.backends.deform_columns import rewrite_as_columns
        from hodor.engine.backends.openvino_ops import extension_library

        node = helper.make_node(
            "DeformConv", ["x", "w", "offsets", "b"], ["y"], kernel_shape=[3, 3], pads=[1] * 4
        )
        model = helper.make_model(
            helper.make_graph(
                [node],
                "deform",
                [helper.make_tensor_value_info(n, TensorProto.FLOAT, list("nchw")) for n in ("x", "offsets")],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                [
                    numpy_helper.from_array(weight, "w"),
                    numpy_helper.from_array(np.zeros(out_ch, np.float32), "b"),
                ],
            ),
            opset_imports=[onnx.helper.make_opsetid("", 19)],
        )
        rewrite_as_columns(model)
        core.add_extension(str(extension_library()))
        request = core.compile_model(
            core.read_model(model.SerializeToString(), b""),
            "CPU",
            {**base, "INFERENCE_PRECISION_HINT": "bf16"},
        ).create_infer_request()
        return lambda: request.infer({"x": x, "offsets": offsets})[0]

    ways = {
        "openvino-fused fp32": fused("f32"),
        "openvino-fused bf16 hint": fused("bf16"),
        "openvino-grouped-columns bf16": grouped_columns(),
        "openvino-gridsample-columns bf16": gridsample_columns(),
    }
    from hodor.engine.backends.openvino_ops import ExtensionUnavailable

    try:
        ways["openvino-engine-columns bf16"] = engine_columns()
    except ExtensionUnavailable as exc:
        print(f"openvino-engine-columns left out: {exc}", file=sys.stderr)
    return ways


def compare_ways(
    min_dim: int, repeats: int, log: Callable[[str], None]
) -> tuple[list[str], dict[str, float]]:
    """The table, and each way's relative error against float64."""
    h, w = min_dim // 8, round(min_dim * 16 / 9) // 8
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, CHANNELS, h, w, generator=gen)
    offsets = 2.0 * torch.randn(1, 18, h, w, generator=gen)
    weight = torch.randn(CHANNELS, CHANNELS, 3, 3, generator=gen) / 48
    want = deform_conv2d(x.double(), offsets.double(), weight.double(), None)
    bf16 = (x.bfloat16(), offsets.bfloat16(), weight.bfloat16(), None)
    ways: dict[str, Callable[[], Any]] = {
        "torch-grid fp32": lambda: deform_conv2d(x, offsets, weight, None),
        "torch-gather fp32": lambda: deform_conv2d_gathered(x, offsets, weight, None),
        "torch-grid bf16": lambda: deform_conv2d(*bf16),
        "torch-gather bf16": lambda: deform_conv2d_gathered(*bf16),
    }
    try:
        ways.update(_openvino_ways(x.numpy(), offsets.numpy(), weight.numpy()))
    except ImportError:
        log("OpenVINO is not installed: its ways are left out (pip install 'hodor-engine[openvino]')")
    errors, times = {}, defaultdict(list)
    with torch.inference_mode():
        for name, run in ways.items():
            out = run()
            errors[name] = relative_error_float64(out.float() if torch.is_tensor(out) else out, want)
            run()
        log(f"{len(ways)} ways at {h}x{w}, {repeats} interleaved rounds")
        for _ in range(repeats):
            for name, run in ways.items():
                start = time.perf_counter()
                run()
                times[name].append(1e3 * (time.perf_counter() - start))
    lines = [
        f"One deformable 3x3 convolution, {CHANNELS} -> {CHANNELS} channels at {h}x{w} (min_dim {min_dim}), "
        f"{usable_cores()} threads; {repeats} interleaved rounds, median (min-max)",
        "",
        "| way | ms | relative error vs float64 |",
        "| --- | --- | ---: |",
    ]
    for name in ways:
        t = times[name]
        spread = f"{statistics.median(t):.1f} ({min(t):.1f}-{max(t):.1f})"
        lines.append(f"| {name} | {spread} | {errors[name]:.1e} |")
    return lines, errors


def profile_stages(args: argparse.Namespace, log: Callable[[str], None]) -> list[str]:
    from hodor.engine.backends.openvino_backend import STATIC_SHAPES_AFTER, OpenVinoBackend

    model = cpu_backends.open_model(args, log)
    clip = cpu_backends.Clip(args.min_dim, args.objects)
    recorder = cpu_backends.record_reference(model, clip, args.window, log)
    backend = OpenVinoBackend(
        model.export_dir, "cpu", config=model.config, precision=args.profile, cache=False,
        extra_properties={"PERF_COUNT": True},
    )  # fmt: skip
    lines = [
        f"OpenVINO, {args.profile}, per-node time of one call per stage (the median of {args.repeats} calls' "
        f"node times) at min_dim {args.min_dim}, {args.objects} objects, window {args.window}",
    ]
    for stage, seam in (("backbone", "backbone"), ("encoder", "encode"), ("decoder", "decode")):
        call = recorder.calls[seam]
        for _ in range(STATIC_SHAPES_AFTER):  # the steady state: fixed-shape compilations made
            cpu_backends.call_stage(backend, seam, call)
        per_kind: dict[tuple[str, str], list[float]] = defaultdict(list)
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            cpu_backends.call_stage(backend, seam, call)
            walls.append(1e3 * (time.perf_counter() - start))
            totals: dict[tuple[str, str], float] = defaultdict(float)
            for _name, node_type, kernel, ms in backend.profile(stage):
                totals[(node_type, kernel)] += ms
            for key, ms in totals.items():
                per_kind[key].append(ms)
        medians = {key: statistics.median(v) for key, v in per_kind.items()}
        lines += [
            "",
            f"{stage}: call {statistics.median(walls):.1f} ms (median), nodes {sum(medians.values()):.1f} ms",
            "",
            "| node type | kernel | ms | share |",
            "| --- | --- | ---: | ---: |",
        ]
        total = sum(medians.values())
        for (node_type, kernel), ms in sorted(medians.items(), key=lambda kv: -kv[1])[: args.top]:
            lines.append(f"| {node_type} | {kernel} | {ms:.1f} | {100 * ms / total:.0f} % |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-dim", type=int, default=480)
    p.add_argument("--repeats", type=int, default=7, help="timed calls of each way or stage (default 7)")
    p.add_argument(
        "--profile", choices=("fp32", "bf16"), help="instead: OpenVINO's per-node times of the three stages"
    )
    p.add_argument("--objects", type=int, default=4, help="with --profile (default 4)")
    p.add_argument("--window", type=int, default=7, help="with --profile (default 7)")
    p.add_argument(
        "--top", type=int, default=12, help="with --profile: node kinds listed per stage (default 12)"
    )
    cpu_backends.add_model_options(p)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.min_dim < 32:
        p.error("--repeats must be >= 1 and --min-dim >= 32")
    if (args.checkpoint is None) != (args.export is None):
        p.error("--checkpoint and --export go together")
    torch.set_num_threads(usable_cores())
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if args.profile:
        try:
            import openvino  # noqa: F401
        except ImportError:
            print("error: --profile needs OpenVINO (pip install 'hodor-engine[openvino]')", file=sys.stderr)
            return 2
        lines = profile_stages(args, log)
    else:
        lines, _ = compare_ways(args.min_dim, args.repeats, log)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
