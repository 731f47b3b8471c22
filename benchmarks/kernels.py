"""Time each fused kernel against eager PyTorch and torch.compile at HODOR's real shapes.

    python benchmarks/kernels.py                      # min_dim 480/720/1080 × 1/4/16 objects, fp16
    python benchmarks/kernels.py --dtype fp32 --history 1 --out benchmarks/RESULTS.md

For every (kernel, frame size, object count) it checks the three implementations
against each other once, then times each with CUDA events (median of ``--iters``
single-call timings after ``--warmup`` calls; with ``--graphs`` each call is a CUDA
graph replay, which removes launch overhead). Achieved bandwidth is the bytes a
kernel must move at least (every input read once, every output written once) over
its time, reported against the bandwidth of a measured device-to-device copy; the
"floor" column is the time that copy bandwidth needs for those bytes.

Frames are 16:9 (a ``min_dim`` of 480 is 480×853, padded to 480×864: 1/8 map 60×108,
1/4 map 120×216); 9 background descriptors. Needs a CUDA GPU and Triton. The deformable
convolution (256 -> 256 channels on the 1/8 map) has no descriptors: its object counts
change nothing.
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hodor.kernels import (
    mask_logits_reference,
    mask_logits_triton,
    masked_avg_pool_reference,
    masked_avg_pool_triton,
    pixel_descriptor_attention_reference,
    pixel_descriptor_attention_triton,
    soft_masked_attention_reference,
    soft_masked_attention_triton,
)
from hodor.kernels.deform_conv import deform_conv2d_triton
from hodor.kernels.testing import TOLERANCE, relative_error
from hodor.model.deform_conv import deform_conv2d

C, HEADS, NUM_BG = 256, 8, 9
KERNELS = (
    "soft_masked_attention",
    "pixel_descriptor_attention",
    "mask_logits",
    "masked_avg_pool",
    "deform_conv",
)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    kernel: str
    min_dim: int
    objects: int
    history: int

    @property
    def map8(self) -> tuple[int, int]:
        """The 1/8 map of a 16:9 frame with short side ``min_dim``, padded to /32."""
        h, w = self.min_dim, round(self.min_dim * 16 / 9)
        return math.ceil(h / 32) * 4, math.ceil(w / 32) * 4


@dataclass
class Workload:
    args: tuple
    reference: Callable
    triton: Callable
    min_bytes: int


def element_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def make_workload(case: Case, dtype: torch.dtype, device: torch.device) -> Workload:
    """Fresh random inputs for one case, and the least traffic the computation needs."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    h8, w8 = case.map8
    n8, n4 = h8 * w8, 4 * h8 * w8
    q = NUM_BG + case.objects
    if case.kernel == "soft_masked_attention":
        mask = torch.rand(1, q, n8, generator=g, device=device)
        scale = torch.tensor([32.0, 32.0, 16.0, 16.0, 8.0, 8.0, 4.0, 4.0], device=device)
        args = (randn(1, q, C), randn(1, n8, C), randn(1, n8, C), mask, scale, HEADS)
        out = torch.empty(1, q, C, dtype=dtype, device=device)
        return Workload(
            args, soft_masked_attention_reference, soft_masked_attention_triton, element_bytes(*args[:5], out)
        )
    if case.kernel == "pixel_descriptor_attention":
        nk = q * case.history
        invalid = torch.rand(1, nk, generator=g, device=device) < 0.2
        args = (randn(1, n8, C), randn(1, nk, C), randn(1, nk, C), invalid, HEADS)
        out = torch.empty(1, n8, C, dtype=dtype, device=device)
        return Workload(
            args,
            pixel_descriptor_attention_reference,
            pixel_descriptor_attention_triton,
            element_bytes(*args[:4], out),
        )
    if case.kernel == "mask_logits":
        f = randn(1, C, 2 * h8, 2 * w8)
        d = randn(1, q, case.history, C)
        invalid = torch.rand(1, q, case.history, generator=g, device=device) < 0.2
        catch_all = randn(1, 1, 2 * h8, 2 * w8)
        out = torch.empty(1, 1 + q, n4, dtype=dtype, device=device)
        args = (f, d, invalid, catch_all)
        return Workload(args, mask_logits_reference, mask_logits_triton, element_bytes(*args, out))
    if case.kernel == "masked_avg_pool":
        f = randn(1, C, h8, w8)
        masks = torch.rand(1, q, h8, w8, generator=g, device=device)
        out = torch.empty(1, q, C, dtype=dtype, device=device)
        args = (f, masks, NUM_BG)
        return Workload(args, masked_avg_pool_reference, masked_avg_pool_triton, element_bytes(f, masks, out))
    if case.kernel == "deform_conv":
        # One of the decoder's deformable 3×3 convolutions (256 -> 256 on the 1/8 map); the
        # reference is the model's own grid_sample + matmul implementation.
        x, offsets = randn(1, C, h8, w8), 2.0 * randn(1, 18, h8, w8)
        weight, bias = randn(C, C, 3, 3) / 48.0, randn(C)
        out = torch.empty(1, C, h8, w8, dtype=dtype, device=device)
        args = (x, offsets, weight, bias)
        return Workload(args, deform_conv2d, deform_conv2d_triton, element_bytes(*args, out))
    raise ValueError(f"unknown kernel {case.kernel!r}")


def time_ms(fn: Callable[[], object], warmup: int, iters: int, graphs: bool) -> float:
    """Median milliseconds of one call (or one graph replay), timed with CUDA events."""
    for _ in range(warmup):
        fn()
    call = fn
    if graphs:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        call = graph.replay
        for _ in range(warmup):
            call()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def copy_bandwidth(device: torch.device, iters: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), over a 1 GiB buffer."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup=3, iters=max(10, iters // 5), graphs=False)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    p.add_argument("--min-dims", nargs="+", type=int, default=[480, 720, 1080], metavar="N")
    p.add_argument("--objects", nargs="+", type=int, default=[1, 4, 16], metavar="I")
    p.add_argument(
        "--history", type=int, default=8, help="history slots T for the decoder kernels (default 8)"
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=200, help="timed calls per measurement (median reported)")
    p.add_argument("--graphs", action="store_true", help="time CUDA graph replays instead of eager launches")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--out", type=Path, help="append the table (device, date, settings) to this Markdown file")
    p.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    args = p.parse_args(argv)
    if (
        args.history < 1
        or args.iters < 1
        or args.warmup < 0
        or min(args.objects) < 1
        or min(args.min_dims) < 32
    ):
        p.error("--history, --iters and --objects must be >= 1, --warmup >= 0, --min-dims >= 32")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "benchmarks/kernels.py needs an NVIDIA GPU with CUDA: torch.cuda.is_available() is False here. "
            "Nothing was measured.",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    bandwidth = copy_bandwidth(device, args.iters)
    name = torch.cuda.get_device_name(device)
    header = (
        f"{name}, {datetime.date.today().isoformat()}, torch {torch.__version__}, {args.dtype}, "
        f"history {args.history}, {'CUDA graphs' if args.graphs else 'eager launches'}, "
        f"median of {args.iters}; device copy {bandwidth / 1e9:.0f} GB/s"
    )
    rows = [
        "| kernel | min_dim | objects | eager ms | compile ms | triton ms | × eager | GB/s | % copy "
        "| floor ms | × floor | rel err |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print(header)
    print("\n".join(rows))
    for kernel in args.kernels:
        compiled = None if args.no_compile else {}
        for min_dim in args.min_dims:
            for objects in args.objects:
                case = Case(kernel, min_dim, objects, args.history)
                work = make_workload(case, dtype, device)
                eager = work.reference(*work.args)
                fused = work.triton(*work.args)
                err = relative_error(fused, eager)  # both in dtype: a sanity check, not the test
                t_eager = time_ms(lambda w=work: w.reference(*w.args), args.warmup, args.iters, args.graphs)
                t_fused = time_ms(lambda w=work: w.triton(*w.args), args.warmup, args.iters, args.graphs)
                t_compile = float("nan")
                if compiled is not None:
                    try:
                        fn = compiled.setdefault(kernel, torch.compile(work.reference, dynamic=False))
                        fn(*work.args)
                        t_compile = time_ms(
                            lambda f=fn, w=work: f(*w.args), args.warmup, args.iters, args.graphs
                        )
                    except Exception as exc:  # report, keep measuring the others
                        print(
                            f"torch.compile failed for {kernel}: {type(exc).__name__}: {exc}", file=sys.stderr
                        )
                floor = work.min_bytes / bandwidth * 1e3
                achieved = work.min_bytes / (t_fused * 1e-3)
                flag = "" if err <= 10 * TOLERANCE[dtype] else " (!)"
                row = (
                    f"| {kernel} | {min_dim} | {objects} | {t_eager:.3f} | {t_compile:.3f} | {t_fused:.3f} "
                    f"| {t_eager / t_fused:.1f} | {achieved / 1e9:.0f} | {100 * achieved / bandwidth:.0f} "
                    f"| {floor:.3f} | {t_fused / floor:.1f} | {err:.1e}{flag} |"
                )
                rows.append(row)
                print(row, flush=True)
    if args.out:
        with args.out.open("a") as fh:
            fh.write(f"\n### {header}\n\n" + "\n".join(rows) + "\n")
        print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
