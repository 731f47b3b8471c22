"""Time every stage before and after the GPU work on one CUDA machine, in one short run.

    python benchmarks/gpu_check.py --out DIR            # on a CUDA GPU (benchmarks/gpu_check.sh runs it)
    python benchmarks/gpu_check.py --out DIR --smoke    # the same code paths on the CPU, tiny sizes

Stages, each "before" against "after", medians over ``--repeats`` timed calls after warm-up:

- ``tail``: the runtime's work after a decode (output id mask, and the soft masks for the
  re-encoding) in the engine's torch code against the two Triton kernels of
  :mod:`hodor.kernels.runtime_tail`, fp32, 480p (854×480 frames processed at 480×864), 4
  and 16 objects, with and without references. Also: pixels whose id differs, largest
  soft-mask difference.
- ``deform_conv``: one deformable 3×3 convolution of the decoder (256 → 256 channels on the
  60×108 map), the model's torch implementation against the Triton kernel, fp16, bf16, fp32,
  with the kernel's error against a float64 reference; the ReLU + GroupNorm that follows it
  in torch (what fusing them could save at most); and a sweep of the kernel's tile sizes in fp16.
- ``decode``: the whole decode stage (5 layers, 4 objects, 8 history slots), plain torch,
  Triton kernels with the torch deformable convolution, and all Triton kernels; eager and as
  a CUDA graph; fp16 and fp32.
- ``handoff``: one frame's backbone and decode, both as CUDA graphs (fp16, batch 1), with the
  features copied between them (before) and handed over in place (after), with the copy counts.
- ``backbone``: Swin-T + FPN at batch 1 and 16, fp16: eager, CUDA graphs, ``torch.compile``
  (with its compile time, from an empty cache); last, as compiling takes longest.

Each stage runs only while ``--budget-s`` lasts (the rest is listed as skipped); results are
written after every stage, so a run cut short still leaves what it measured:
``DIR/gpu_check.json`` and a Markdown table ``DIR/gpu_check.md``. Random weights: speed does
not depend on weight values.

Timing: ``wall ms`` is host time from a synchronised start to the end of the synchronised
call (launch overhead included, what a frame pays); ``gpu ms`` is CUDA-event time around the
call. Both medians.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Sizes:
    """Problem sizes: the real ones on CUDA, tiny ones for ``--smoke``."""

    frame: tuple[int, int]  # (H, W) of the input frames
    min_dim: int
    objects: tuple[int, ...]
    history: int
    backbone_batches: tuple[int, ...]
    channels: int  # deformable convolution channels (the model's are 256)
    sweep: list[dict[str, int]] = field(default_factory=list)


REAL = Sizes(
    frame=(480, 854),
    min_dim=480,
    objects=(4, 16),
    history=8,
    backbone_batches=(1, 16),
    channels=256,
    sweep=[
        {"block_p": p, "block_o": o, "block_c": c}
        for p in (32, 64, 128)
        for o in (64, 128, 256)
        for c in (32, 64)
        if p * o <= 128 * 128
    ],
)
SMOKE = Sizes(
    frame=(48, 80),
    min_dim=64,
    objects=(2,),
    history=3,
    backbone_batches=(1, 2),
    channels=32,
    sweep=[{"block_p": 16, "block_o": 16, "block_c": 16}],
)


class Timer:
    """Median wall and GPU milliseconds of single calls."""

    def __init__(self, device: torch.device, warmup: int, repeats: int) -> None:
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> dict[str, float | None]:
        for _ in range(self.warmup):
            fn()
        self.sync()
        walls, gpus = [], []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0 = time.perf_counter()
                start.record()
                fn()
                end.record()
                self.sync()
                walls.append((time.perf_counter() - t0) * 1e3)
                gpus.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                walls.append((time.perf_counter() - t0) * 1e3)
        return {
            "wall_ms": statistics.median(walls),
            "gpu_ms": statistics.median(gpus) if gpus else None,
            "wall_ms_min": min(walls),
            "repeats": self.repeats,
        }


class Report:
    """Results by stage, written out after every stage."""

    def __init__(self, out: Path, args: argparse.Namespace, device: torch.device) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "smoke": args.smoke,
            "machine": describe(device),
            "settings": {"repeats": args.repeats, "warmup": args.warmup, "budget_s": args.budget_s},
            "stages": {},
            "skipped": {},
            "errors": {},
        }

    def stage(self, name: str) -> list[dict[str, Any]]:
        return self.data["stages"].setdefault(name, [])

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def describe(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0]}
    info["device"] = str(device)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    return info


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.2e}" if 0 < abs(x) < 0.01 else f"{x:.{digits}f}"
    return str(x)


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# GPU check, {data['date']}",
        "",
        f"{m.get('gpu', m['device'])}, torch {m['torch']}, triton {m.get('triton')}, "
        f"median of {data['settings']['repeats']} calls{' (smoke run: tiny sizes)' if data['smoke'] else ''}",
    ]
    for stage, rows in data["stages"].items():
        if not rows:
            continue
        keys = [k for k in rows[0] if k not in ("wall_ms_min", "repeats")]
        for row in rows[1:]:
            keys += [k for k in row if k not in keys and k not in ("wall_ms_min", "repeats")]
        lines += ["", f"## {stage}", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    for title, key in (("Skipped", "skipped"), ("Errors", "errors")):
        if data[key]:
            lines += ["", f"## {title}", ""] + [f"- {k}: {v}" for k, v in data[key].items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- inputs


def geometry_for(sizes: Sizes):
    from hodor.engine.loop.preprocess import frame_geometry

    # max_dim large enough that the short side decides: 854×480 -> 480×854, padded 480×864.
    return frame_geometry(*sizes.frame, sizes.min_dim, 4 * sizes.min_dim)


def blob_logits(h: int, w: int, channels: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``[1, channels, h, w]``: noise plus one bright blob per channel (every channel wins somewhere)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, channels, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for c in range(channels):
        cy, cx = float(torch.rand(1, generator=g)) * h, float(torch.rand(1, generator=g)) * w
        r = 2.0 + 0.05 * min(h, w) * float(torch.rand(1, generator=g))
        logits[0, c] += 6.0 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return logits.to(device)


def small_network(smoke: bool):
    """HodorNet with the official defaults (random weights, seed 0); in a smoke run 1 layer each."""
    from hodor.config import parse_config
    from hodor.model import HodorNet

    raw = {"MODEL": {"ENCODER_LAYERS": 1, "DECODER_LAYERS": 1}} if smoke else {}
    cfg = parse_config(raw)
    torch.manual_seed(0)
    return HodorNet(cfg.model).eval(), cfg


# ----------------------------------------------------------------------------------- stages


def check_tail(report: Report, timer: Timer, sizes: Sizes, device: torch.device) -> None:
    from hodor.engine.loop.masks import background_grid

    geometry = geometry_for(sizes)
    hp, wp = geometry.padded
    first = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    first[hp // 8 : hp // 2, wp // 8 : wp // 2] = True
    second = torch.zeros_like(first)
    second[hp // 3 : hp, wp // 3 : wp] = True
    user = torch.zeros(geometry.size, dtype=torch.uint8, device=device)
    user[geometry.height // 8 : geometry.height // 2, geometry.width // 8 : geometry.width // 2] = 1
    grid = background_grid(3, 3, *geometry.at_stride(8), device=device)
    for objects in sizes.objects:
        logits = blob_logits(*geometry.at_stride(4), 10 + objects, device, seed=objects)
        tail_case(report, timer, geometry, logits, grid, [], None)
        tail_case(report, timer, geometry, logits, grid, [(0, first), (1, second)], user)
        report.write()


def tail_case(report, timer, geometry, logits, grid, overrides, user_mask) -> None:
    """One frame's tail, torch against Triton: logits ``[1, 10 + I, Hp/4, Wp/4]`` (catch-all and 9
    background channels first), ``overrides`` (object slot, padded bool mask), the user's mask."""
    from hodor.engine.loop.masks import id_mask_from_maps, override_with_references, resample
    from hodor.kernels.runtime_tail import (
        channel_flags,
        encoder_masks,
        id_table,
        output_id_mask,
        reference_override,
    )

    nb, q = 10, logits.shape[1]
    ids = list(range(1, q - nb + 1))
    annotated = [nb + slot for slot, _ in overrides]
    device = logits.device

    def torch_output():
        probs = torch.softmax(resample(logits, geometry.padded), 1)[0]
        probs = override_with_references(probs, nb, overrides)
        probs = probs[:, : geometry.resized_height, : geometry.resized_width]
        probs = resample(probs[None], geometry.size)[0]
        if annotated:
            probs[annotated] = -1.0
        out = id_mask_from_maps(probs, nb, ids)
        return torch.where(user_mask > 0, user_mask, out) if user_mask is not None else out

    def torch_internal():
        probs = resample(torch.softmax(logits, 1), geometry.padded)[0]
        probs = override_with_references(probs, nb, overrides)
        probs = resample(probs[None], geometry.at_stride(8))[0]
        fg = probs[nb:]
        return fg[None], (grid * (1.0 - fg.sum(0, keepdim=True)))[None]

    # The Triton side builds its small per-frame inputs each call, as the loop would.
    def triton_output():
        override = reference_override(q, nb, overrides)
        hidden = channel_flags(q, annotated, device) if annotated else None
        table = id_table(nb, ids, device)
        return output_id_mask(
            logits, geometry.padded, geometry.resized, geometry.size, table, override, hidden, user_mask
        )

    def triton_internal():
        return encoder_masks(logits, geometry.padded, nb, grid, reference_override(q, nb, overrides))

    differ = int((triton_output() != torch_output()).sum())
    fg_t, bg_t = torch_internal()
    fg_k, bg_k = triton_internal()
    soft = max(float((fg_t - fg_k).abs().max()), float((bg_t - bg_k).abs().max()))
    paths = (("output", torch_output, triton_output), ("internal", torch_internal, triton_internal))
    for path, before, after in paths:
        t_before, t_after = timer(before), timer(after)
        report.stage("tail").append({
            "path": path, "objects": q - nb, "references": len(overrides),
            "torch wall ms": t_before["wall_ms"], "triton wall ms": t_after["wall_ms"],
            "torch gpu ms": t_before["gpu_ms"], "triton gpu ms": t_after["gpu_ms"],
            "speed-up (wall)": t_before["wall_ms"] / t_after["wall_ms"],
            "ids differing": differ if path == "output" else None,
            "max soft diff": soft if path == "internal" else None,
        })  # fmt: skip


def check_deform_conv(report: Report, timer: Timer, sizes: Sizes, device: torch.device) -> None:
    import torch.nn.functional as F

    from hodor.kernels.deform_conv import deform_conv2d_triton, pack_weight
    from hodor.kernels.testing import relative_error
    from hodor.model.deform_conv import deform_conv2d

    geometry = geometry_for(sizes)
    h, w = geometry.at_stride(8)
    c = sizes.channels
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(1, c, h, w, generator=g)
    off32 = 2.0 * torch.randn(1, 18, h, w, generator=g)
    w32 = torch.randn(c, c, 3, 3, generator=g) / (9 * c) ** 0.5
    b32 = 0.1 * torch.randn(c, generator=g)
    gn = torch.nn.GroupNorm(16, c).to(device)
    rows = report.stage("deform_conv")
    for name, dtype in DTYPES.items():
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            report.data["skipped"][f"deform_conv {name}"] = "no bfloat16 on this GPU"
            continue
        if dtype == torch.bfloat16 and device.type == "cpu":
            report.data["skipped"][f"deform_conv {name}"] = "bf16 tl.dot is wrong in Triton's interpreter"
            continue
        x, off, wt, bias = (t.to(device=device, dtype=dtype) for t in (x32, off32, w32, b32))
        packed = pack_weight(wt)
        ref = deform_conv2d(x.double(), off.double(), wt.double(), bias.double())
        err = relative_error(deform_conv2d_triton(x, off, wt, bias, packed_weight=packed), ref)
        before = timer(lambda x=x, off=off, wt=wt, bias=bias: deform_conv2d(x, off, wt, bias))
        after = timer(lambda x=x, off=off, wt=wt, bias=bias, p=packed: deform_conv2d_triton(
            x, off, wt, bias, packed_weight=p))  # fmt: skip
        y = deform_conv2d_triton(x, off, wt, bias, packed_weight=packed)
        gn_d = copy.deepcopy(gn).to(dtype)
        epilogue = timer(lambda y=y, gn_d=gn_d: gn_d(F.relu(y)))
        rows.append({
            "dtype": name, "torch wall ms": before["wall_ms"], "triton wall ms": after["wall_ms"],
            "torch gpu ms": before["gpu_ms"], "triton gpu ms": after["gpu_ms"],
            "speed-up (gpu)": (before["gpu_ms"] or before["wall_ms"]) / (after["gpu_ms"] or after["wall_ms"]),
            "relu+groupnorm gpu ms": epilogue["gpu_ms"], "rel err vs fp64": err,
        })  # fmt: skip
        report.write()
    # Tile sizes, fp16 (bf16 shares them): the default is what deform_conv_config picks.
    if device.type == "cuda":
        x, off, wt, bias = (t.to(device=device, dtype=torch.float16) for t in (x32, off32, w32, b32))
        packed = pack_weight(wt)
        sweep = report.stage("deform_conv tiles fp16")
        for tiles in sizes.sweep:
            try:
                t = timer(lambda t=tiles: deform_conv2d_triton(x, off, wt, bias, packed_weight=packed, **t))
                sweep.append({**tiles, "gpu ms": t["gpu_ms"]})
            except Exception as exc:  # a tile too large for shared memory: note it, go on
                sweep.append({**tiles, "gpu ms": None, "error": f"{type(exc).__name__}: {exc}"[:120]})
        report.write()


def check_decode(report: Report, timer: Timer, sizes: Sizes, device: torch.device) -> None:
    from hodor.engine.backends.cuda_graphs import CudaGraphRunner
    from hodor.engine.backends.torch_backend import TorchBackend
    from hodor.model.deform_conv import DeformConv2d

    base, cfg = small_network(report.data["smoke"])
    geometry = geometry_for(sizes)
    h, w = geometry.at_stride(8)
    g = torch.Generator().manual_seed(1)
    objects, t = sizes.objects[0], sizes.history
    qb = cfg.model.num_bg_descriptors
    f4 = torch.randn(1, 256, 2 * h, 2 * w, generator=g).to(device)
    f8 = torch.randn(1, 256, h, w, generator=g).to(device)
    fg_hist = torch.randn(1, objects, t, 256, generator=g).to(device)
    bg_hist = torch.randn(1, qb, t, 256, generator=g).to(device)
    fg_invalid = torch.zeros(1, objects, t, dtype=torch.bool, device=device)
    bg_invalid = torch.zeros(1, qb, t, dtype=torch.bool, device=device)
    bg_invalid[..., -1] = True
    args = (f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)
    rows = report.stage("decode")
    dtypes = ("fp16", "fp32") if device.type == "cuda" else ("fp32",)
    variants = (("torch", "torch"), ("triton, torch deform conv", "triton"), ("triton", "triton"))
    for dname in dtypes:
        reference = None
        for label, kernels in variants:
            for graphs in (False, True) if device.type == "cuda" else (False,):
                net = copy.deepcopy(base).to(device)
                runner = CudaGraphRunner(enabled=graphs)
                backend = TorchBackend(net, cfg, device, kernels=kernels, dtype=DTYPES[dname], graphs=runner)
                if label.endswith("torch deform conv"):
                    for module in net.modules():
                        if isinstance(module, DeformConv2d):
                            module.kernels = "torch"
                out = backend.decode(*args)
                if reference is None:
                    reference = out
                diff = float((out - reference).abs().max() / reference.abs().max())
                timing = timer(lambda b=backend: b.decode(*args))
                rows.append({
                    "dtype": dname, "kernels": label, "cuda graph": graphs, "wall ms": timing["wall_ms"],
                    "gpu ms": timing["gpu_ms"], "rel diff vs torch eager": diff,
                    "graph captures": backend.graphs.stats.captures,
                })  # fmt: skip
                report.write()
                del backend, net
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def check_handoff(report: Report, timer: Timer, sizes: Sizes, device: torch.device) -> None:
    """One frame's backbone and decode with both in CUDA graphs, fp16, batch 1: the features
    copied between them (the backbone graph's outputs cloned, then copied into decode's inputs:
    before) against handed over in place (``backbone_transient``, decode's graph reading the
    backbone graph's outputs: after). On the CPU (smoke) the same calls run eagerly."""
    from hodor.engine.backends.cuda_graphs import CudaGraphRunner
    from hodor.engine.backends.torch_backend import TorchBackend

    base, cfg = small_network(report.data["smoke"])
    geometry = geometry_for(sizes)
    h, w = geometry.at_stride(8)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(1, 3, *geometry.padded, generator=g).to(device)
    objects, t = sizes.objects[0], sizes.history
    qb = cfg.model.num_bg_descriptors
    fg_hist = torch.randn(1, objects, t, 256, generator=g).to(device)
    bg_hist = torch.randn(1, qb, t, 256, generator=g).to(device)
    fg_invalid = torch.zeros(1, objects, t, dtype=torch.bool, device=device)
    bg_invalid = torch.zeros(1, qb, t, dtype=torch.bool, device=device)
    rest = (fg_hist, bg_hist, fg_invalid, bg_invalid)
    cuda = device.type == "cuda"
    rows = report.stage("handoff")
    reference = None
    for variant in ("features copied (before)", "features in place (after)"):
        net = copy.deepcopy(base).to(device)
        stages = CudaGraphRunner(enabled=cuda)
        backbone = CudaGraphRunner(enabled=cuda, max_graphs=2)
        backend = TorchBackend(
            net, cfg, device, kernels="torch", dtype=torch.float16 if cuda else torch.float32,
            graphs=stages, backbone="graphs" if cuda else "eager", backbone_graphs=backbone,
        )  # fmt: skip
        if variant.startswith("features copied"):
            stages.feeds_from = None

            def frame(b=backend) -> torch.Tensor:
                return b.decode(*b.backbone(images), *rest)
        else:

            def frame(b=backend) -> torch.Tensor:
                return b.decode(*b.backbone_transient(images), *rest)

        out = frame()
        reference = out if reference is None else reference
        timing = timer(frame)
        rows.append({
            "variant": variant, "wall ms": timing["wall_ms"], "gpu ms": timing["gpu_ms"],
            "rel diff vs before": float((frame() - reference).abs().max() / reference.abs().max()),
            "decode inputs copied": stages.stats.input_copies,
            "decode inputs in place": stages.stats.inputs_in_place,
            "inputs adopted": stages.stats.inputs_adopted,
        })  # fmt: skip
        report.write()
        del backend, net
        if cuda:
            torch.cuda.empty_cache()


def check_backbone(report: Report, timer: Timer, sizes: Sizes, device: torch.device, deadline: float) -> None:
    from hodor.engine.backends.torch_backend import TorchBackend

    base, cfg = small_network(report.data["smoke"])
    geometry = geometry_for(sizes)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    modes = ("eager", "graphs", "compile") if device.type == "cuda" else ("eager",)
    rows = report.stage("backbone")
    for batch in sizes.backbone_batches:
        g = torch.Generator().manual_seed(batch)
        images = torch.randn(batch, 3, *geometry.padded, generator=g).to(device)
        eager_ms = None
        for mode in modes:
            if time.monotonic() > deadline:
                report.data["skipped"][f"backbone {mode} batch {batch}"] = "out of time (--budget-s)"
                continue
            if mode == "compile":
                torch._dynamo.reset()  # a static compile for this batch size, as a fresh process makes
            net = copy.deepcopy(base).to(device)
            backend = TorchBackend(net, cfg, device, kernels="torch", dtype=dtype, backbone=mode)
            start = time.perf_counter()
            first = backend.backbone(images)
            timer.sync()
            first_s = time.perf_counter() - start
            timing = timer(lambda b=backend, x=images: b.backbone(x))
            eager_ms = timing["wall_ms"] if mode == "eager" else eager_ms
            compile_failure = None
            if backend.compiled_backbone is not None:
                compile_failure = backend.compiled_backbone.stats.failure
            rows.append({
                "batch": batch, "mode": mode, "wall ms": timing["wall_ms"], "gpu ms": timing["gpu_ms"],
                "wall ms / frame": timing["wall_ms"] / batch,
                "× eager (wall)": (eager_ms / timing["wall_ms"]) if eager_ms else None,
                "first call s": first_s, "compile s": backend.backbone_compile_seconds,
                "compile failure": compile_failure,
                "graph captures": backend.backbone_graphs.stats.captures,
            })  # fmt: skip
            report.write()
            del backend, net, first
            if device.type == "cuda":
                torch.cuda.empty_cache()


STAGES = ("tail", "deform_conv", "decode", "handoff", "backbone")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=330.0, help="stop starting new stages after this")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (Triton's interpreter)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        device, sizes = torch.device("cpu"), SMOKE
    elif not torch.cuda.is_available():
        print("benchmarks/gpu_check.py needs a CUDA GPU (or --smoke): nothing was measured", file=sys.stderr)
        return 2
    else:
        device, sizes = torch.device("cuda"), REAL
        # fp32 means fp32: TF32 would blur the fp32 rows and the errors against float64.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
            # An empty cache, so that the compile time is a first compile's; outside --out.
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="hodor-gpu-check-inductor-")
    start = time.monotonic()
    deadline = start + args.budget_s
    report = Report(args.out, args, device)
    timer = Timer(device, args.warmup, args.repeats)
    stages: dict[str, Callable[[], None]] = {
        "tail": lambda: check_tail(report, timer, sizes, device),
        "deform_conv": lambda: check_deform_conv(report, timer, sizes, device),
        "decode": lambda: check_decode(report, timer, sizes, device),
        "handoff": lambda: check_handoff(report, timer, sizes, device),
        "backbone": lambda: check_backbone(report, timer, sizes, device, deadline),
    }
    with torch.inference_mode():
        for name in args.stages:
            if time.monotonic() > deadline:
                report.data["skipped"][name] = "out of time (--budget-s)"
                continue
            t0 = time.monotonic()
            try:
                stages[name]()
            except Exception as exc:  # one stage failing must not lose the others' figures
                report.data["errors"][name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            report.data.setdefault("stage_seconds", {})[name] = round(time.monotonic() - t0, 1)
            report.write()
            print(f"gpu_check: {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    report.data["elapsed_s"] = round(time.monotonic() - start, 1)
    report.write()
    print((args.out / "gpu_check.md").read_text())
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
