"""``hodor-export CKPT``: the three stage graphs (fp32, and fp16 on request) and their manifest.

The export is written into a staging directory beside ``--out`` and swapped into place at the
end (:mod:`hodor.engine.io.staging`), under a lock that refuses a second export into the same
directory: an interrupted or failed export leaves the previous one as it was.

Re-exporting into an existing export directory replaces what an export writes there:
``manifest.json``, every ``*.onnx`` graph and every ``*.engine`` (engines are rebuilt, or reused
when nothing they depend on changed). Everything else in the directory is kept, except the
caches that ``hodor-run`` builds from the graphs (``ort-trt-cache/``, ``runtime-cache.*.bin``,
``ort-cache/``, ``openvino-cache/``), which are kept only when the new graphs are byte for byte
the previous ones: ONNX Runtime recognises a cached TensorRT engine by the graph's structure, not
its weights, and would run a stale one; the optimised and rewritten graphs and compiled models of
the other two are keyed by the graphs' digests, and the old entries would only take disk space.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hodor
from hodor.command_line import EXIT_USER_ERROR, CommandLineParser, print_error
from hodor.config import HodorConfig, config_beside
from hodor.engine.backends.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    PRECISIONS,
    SIZE_MULTIPLE,
    STAGES,
    GraphEntry,
    Limits,
    Manifest,
    load_manifest,
    sha256_file,
    write_manifest,
)
from hodor.engine.io.staging import StagedDir, claim_output
from hodor.errors import HodorError

PROG = "hodor-export"
EXPORT_WRITES = (MANIFEST_NAME, "*.onnx", "*.engine")
"""What an export writes, and a re-export replaces."""
GRAPH_CACHES = ("ort-trt-cache", "runtime-cache.*.bin", "ort-cache", "openvino-cache")
"""What ``hodor-run`` builds from an export's graphs and keeps in its directory. ``ort-cache/``
and ``openvino-cache/`` are keyed by the graphs' digests, so they are never stale, but entries of
graphs that were replaced would only take disk space (hundreds of MB each)."""

DEFAULT_OPSET = 20
# As many videos per call as frames per backbone call: the largest activations are of a size.
DEFAULT_MAX_STREAMS = 16
MIN_OPSET = 18  # LayerNormalization (17) and the exporter's own floor (18)
# Export-time self-check against the torch network, at a size the graph was not traced at.
SELF_CHECK_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
TENSORRT_MISSING = (
    "TensorRT is not installed: pip install hodor-engine[tensorrt] or hodor-engine[tensorrt-rtx]"
)


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(
        prog=PROG,
        description="Export a HODOR checkpoint to ONNX stage graphs (and TensorRT engines) for hodor-run.",
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="official HODOR checkpoint (.pth)")
    p.add_argument("--config", type=Path, metavar="YAML", help="config.yaml (default: the one beside CKPT)")
    p.add_argument("--out", type=Path, metavar="DIR", help="export directory (default: ./<CKPT stem>.hodor/)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16 also writes *.fp16.onnx graphs beside the fp32 ones (default: fp32)",
    )
    p.add_argument(
        "--max-objects", type=int, default=32, metavar="N", help="most objects per video (default: 32)"
    )
    p.add_argument(
        "--max-window", type=int, default=16, metavar="T", help="longest --temporal-window (default: 16)"
    )
    p.add_argument(
        "--max-batch", type=int, default=16, metavar="B", help="most frames per backbone call (default: 16)"
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        metavar="N",
        help="most videos segmented together, in one encode or decode call "
        f"(hodor-run with several inputs, BatchSession; default: {DEFAULT_MAX_STREAMS})",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=64,
        metavar="PX",
        help="smallest side of the padded frame (default: 64)",
    )
    p.add_argument(
        "--max-size",
        type=int,
        metavar="PX",
        help="largest side of the padded frame (default: the config's MAX_DIM or 1024, whichever is larger)",
    )
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset (default: {DEFAULT_OPSET})"
    )
    p.add_argument(
        "--tensorrt",
        nargs="?",
        const="on",
        default="auto",
        choices=("auto", "on", "off"),
        help="build TensorRT engines: auto (when TensorRT is importable, the default), on (alone: on), off",
    )
    p.add_argument(
        "--trt-flavour",
        choices=("tensorrt", "rtx"),
        help="TensorRT flavour that builds the engines (default: TensorRT with a GPU, else TensorRT for RTX)",
    )
    return p


def _ceil(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    return int(math.ceil(value / multiple) * multiple)


def limits_from_args(args: argparse.Namespace, cfg: HodorConfig) -> Limits:
    if args.max_objects < 1:
        raise HodorError(f"--max-objects must be at least 1, got {args.max_objects}")
    if args.max_window < 0:
        raise HodorError(f"--max-window must be 0 or more, got {args.max_window}")
    if args.max_batch < 1:
        raise HodorError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.max_streams < 1:
        raise HodorError(f"--max-streams must be at least 1, got {args.max_streams}")
    min_size = args.min_size
    max_size = args.max_size if args.max_size is not None else max(1024, _ceil(cfg.input.max_dim))
    for flag, v in (("--min-size", min_size), ("--max-size", max_size)):
        if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
            raise HodorError(f"{flag} must be a positive multiple of {SIZE_MULTIPLE}, got {v}")
    if min_size > max_size:
        raise HodorError(f"--min-size {min_size} is larger than --max-size {max_size}")
    # TensorRT tunes for a 16:9 frame at the config's MIN_DIM, as the official pipeline resizes it.
    opt_h = _ceil(cfg.input.min_dim)
    opt_w = _ceil(round(cfg.input.min_dim * 16 / 9))
    clamp = lambda v: min(max(v, min_size), max_size)  # noqa: E731
    return Limits(
        max_objects=args.max_objects,
        max_history=args.max_window + 1,
        max_batch=args.max_batch,
        min_size=min_size,
        max_size=max_size,
        opt_height=clamp(opt_h),
        opt_width=clamp(opt_w),
        max_streams=args.max_streams,
    )


def _check_export_packages() -> None:
    """The exporter's packages are an extra: the runtime (and ``make demo``) installs without them."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise HodorError(
            f"hodor-export needs {' and '.join(missing)}, which are not installed: "
            "pip install 'hodor-engine[export]' (from a checkout: pip install -e '.[export]')"
        )


def _check_opset(opset: int) -> None:
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise HodorError(f"--opset must be between {MIN_OPSET} and {newest} (this onnx), got {opset}")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _preprocessing(cfg: HodorConfig) -> dict[str, object]:
    inp = cfg.input
    return {
        "color_order": "rgb" if inp.rgb_input else "bgr",
        "mean_bgr": list(inp.mean_bgr),
        "std_bgr": list(inp.std_bgr),
        "normalize_to_unit_scale": inp.normalize_to_unit_scale,
        "min_dim": inp.min_dim,
        "max_dim": inp.max_dim,
        "resize": "bilinear, align_corners=False, no antialiasing, to (round(s*h), round(s*w))",
        "pad": f"zeros, right and bottom, to a multiple of {SIZE_MULTIPLE}",
    }


def _prepare_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise HodorError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise HodorError(
            f"--out {out} is a non-empty directory that is not a hodor export (no {MANIFEST_NAME}); "
            "choose another --out"
        )


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _graph_digests(manifest: Manifest) -> dict[tuple[str, str], str]:
    return {
        (p, stage): entry.sha256 for p, stages in manifest.graphs.items() for stage, entry in stages.items()
    }


def _carried_over(out: Path, new: Manifest) -> Callable[[str], bool]:
    """Which entries of the previous export in ``out`` the new one keeps (see the module docstring)."""
    try:
        same_graphs = _graph_digests(load_manifest(out, verify=False)) == _graph_digests(new)
    except (HodorError, OSError, ValueError, KeyError, TypeError):
        same_graphs = False

    def keep(name: str) -> bool:
        if _matches(name, EXPORT_WRITES):
            return False
        return same_graphs or not _matches(name, GRAPH_CACHES)

    return keep


def _tensorrt_module() -> Any:
    """``hodor.export.tensorrt_build``, or None where it cannot be imported."""
    try:
        from hodor.export import tensorrt_build
    except ImportError:
        return None
    return tensorrt_build


def _resolve_tensorrt(mode: str, flavour: str | None) -> tuple[Any, Any]:
    """(builder module, chosen flavour) or (None, None) to build no engines.

    Decided before the ONNX export so that ``--tensorrt on`` without TensorRT fails at once.
    """
    if mode == "off":
        return None, None
    module = _tensorrt_module()
    if module is None:
        if mode == "on":
            raise HodorError(TENSORRT_MISSING)
        return None, None
    chosen = module.resolve_flavour(flavour, mode)
    return (module, chosen) if chosen is not None else (None, None)


def run_export(args: argparse.Namespace, say=print) -> Path:
    """The whole export as the command line runs it. Returns the export directory."""
    started = time.perf_counter()
    ckpt: Path = args.checkpoint
    if not ckpt.is_file():
        raise HodorError(f"checkpoint not found: {ckpt}")
    _check_export_packages()
    _check_opset(args.opset)
    cfg = config_beside(ckpt, args.config)
    limits = limits_from_args(args, cfg)
    out: Path = args.out if args.out is not None else Path.cwd() / f"{ckpt.stem}.hodor"
    out = out.absolute()
    _prepare_target(out)
    trt_module, trt_flavour = _resolve_tensorrt(args.tensorrt, args.trt_flavour)
    with claim_output(out, PROG) as claim:
        out = claim.target
        _prepare_target(out)  # again, now that no other export can change it
        graphs, trt_note = _write_export(args, ckpt, cfg, limits, out, (trt_module, trt_flavour), say)

    precisions = tuple(graphs)
    sizes = ", ".join(f"{s} {sum(graphs[p][s].bytes for p in precisions) / 1e6:.1f} MB" for s in STAGES)
    say(
        f"hodor-export: {'+'.join(precisions)} graphs ({sizes}) in {time.perf_counter() - started:.1f} s "
        f"-> {out}; {trt_note}"
    )
    return out


def _write_export(
    args: argparse.Namespace,
    ckpt: Path,
    cfg: HodorConfig,
    limits: Limits,
    out: Path,
    tensorrt: tuple[Any, Any],
    say: Callable[[str], None],
) -> tuple[dict[str, dict[str, GraphEntry]], str]:
    """Export into a staging directory and swap it in place of ``out``; return the graphs written
    and a note on the TensorRT engines."""
    import torch

    from hodor.export.onnx_export import export_stage, save_graph, verify_against_torch
    from hodor.export.onnx_fp16 import convert_to_fp16
    from hodor.model import load_hodor

    net = load_hodor(ckpt, cfg, torch.device("cpu")).eval()
    precisions = ("fp32", "fp16") if args.precision == "fp16" else ("fp32",)
    num_bg = cfg.model.num_bg_descriptors

    with StagedDir(out) as staged:
        tmp = staged.path
        graphs: dict[str, dict[str, GraphEntry]] = {p: {} for p in precisions}
        checks: dict[str, dict[str, float | None]] = {p: {} for p in precisions}
        for k, stage in enumerate(STAGES, 1):
            t0 = time.perf_counter()
            say(f"[{k}/{len(STAGES)}] {stage}: exporting ...")
            fp32 = export_stage(net, stage, cfg, limits, args.opset)
            models = {"fp32": fp32}
            if "fp16" in precisions:
                models["fp16"] = convert_to_fp16(fp32)
            parts = []
            for p, model in models.items():
                err = verify_against_torch(net, stage, model, cfg, limits, SELF_CHECK_TOLERANCE[p])
                checks[p][stage] = err
                graphs[p][stage] = save_graph(model, tmp, stage, p, num_bg, limits)
                note = "" if err is None else f", rel err {err:.1e}"
                parts.append(f"{p} {graphs[p][stage].bytes / 1e6:.1f} MB{note}")
            say(f"[{k}/{len(STAGES)}] {stage}: {'; '.join(parts)} ({time.perf_counter() - t0:.1f} s)")
        manifest = Manifest(
            hodor_version=hodor.__version__,
            opset=args.opset,
            precision=args.precision,
            io_dtype="float32",
            config=cfg.to_dict(),
            preprocessing=_preprocessing(cfg),
            limits=limits,
            graphs=graphs,
            dynamic_axes=limits.describe_axes(),
            exporter={
                "method": "torch.onnx.export(dynamo=True), onnx.checker full_check, shape inference",
                "fp16": "hodor.export.onnx_fp16: fp32 I/O; norms, softmax, reductions, mask tests, "
                "GridSample in fp32",
                "format_version": FORMAT_VERSION,
                "versions": _versions(),
                "self_check_rel_err": checks,
            },
            checkpoint={"file": ckpt.name, "sha256": sha256_file(ckpt), "bytes": ckpt.stat().st_size},
        )
        write_manifest(tmp, manifest)
        trt_note = (
            "TensorRT engines: none (--tensorrt off)" if args.tensorrt == "off" else "TensorRT engines: none"
        )
        trt_module, trt_flavour = tensorrt
        if trt_module is not None:
            previous = out if (out / MANIFEST_NAME).is_file() else None
            record = trt_module.build_engines(
                tmp, manifest, trt_flavour.name, args.tensorrt, previous_dir=previous, progress=say
            )
            if record is not None:
                write_manifest(tmp, replace(manifest, tensorrt=record))
                trt_note = f"TensorRT engines: {trt_flavour.label} {trt_flavour.version}"
        staged.commit(keep=_carried_over(out, manifest))
    return graphs, trt_note


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_export(args, say=lambda line: print(line, flush=True))
    except HodorError as exc:
        print_error(PROG, exc)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
