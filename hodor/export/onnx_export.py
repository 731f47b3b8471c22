"""Torch -> ONNX, one graph per stage of the seam (docs/design.md, "Stages"), all axes that vary dynamic.

The graphs are traced with ``torch.export`` (``torch.onnx.export(dynamo=True)``): its symbolic
shapes carry every size-dependent computation of the network (Swin's padding to the window and
its shifted-window mask, the position encodings, the deformable-convolution grids, the
background grid) into the graph as shape arithmetic, so one graph serves every frame size and
its results are those of the eager model at that size. The TorchScript exporter bakes such
Python integers in at the traced size; it is not used.

Spatial sizes are declared as multiples (``H = 32·k``), which is what the runtime feeds and what
lets the exporter prove the 1/4 and 1/8 maps exact.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from hodor.accuracy import relative_error
from hodor.config import CHANNELS, HodorConfig
from hodor.engine.backends.manifest import (
    SIZE_MULTIPLE,
    GraphEntry,
    Limits,
    TensorSpec,
    graph_filename,
    sha256_file,
)
from hodor.model.swin import SwinTransformer

# Example sizes the graphs are traced at. Distinct values within each graph on purpose:
# torch.export unifies equal sizes into one symbol ("duck sizing") and specialises sizes 0 and 1.
TRACE_BATCH, TRACE_H, TRACE_W, TRACE_OBJECTS, TRACE_HISTORY = 2, 256, 320, 3, 5
# Videos per encode/decode call: above any traced object count or history length, which it meets
# in the same graphs (the backbone's batch is another graph's axis).
TRACE_STREAMS = 6


class BackboneStage(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.backbone(images)


class EncoderStage(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self, f8: torch.Tensor, fg_masks: torch.Tensor, bg_masks: torch.Tensor, fg_invalid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.encode(f8, fg_masks, bg_masks, fg_invalid)


class DecoderStage(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> torch.Tensor:
        return self.net.decode(f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)


STAGE_MODULES: dict[str, type[nn.Module]] = {
    "backbone": BackboneStage,
    "encoder": EncoderStage,
    "decoder": DecoderStage,
}


def stage_signature(stage: str, num_bg: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of a stage graph with symbolic shapes (names as in
    ``hodor.engine.backends.manifest``)."""
    f, b, c, s = "float32", "bool", CHANNELS, "streams"
    h4, w4, h8, w8 = "H/4", "W/4", "H/8", "W/8"
    if stage == "backbone":
        ins = (TensorSpec("images", f, ("batch", 3, "H", "W")),)
        outs = (TensorSpec("f4", f, ("batch", c, h4, w4)), TensorSpec("f8", f, ("batch", c, h8, w8)))
    elif stage == "encoder":
        ins = (
            TensorSpec("f8", f, (s, c, h8, w8)),
            TensorSpec("fg_masks", f, (s, "objects", h8, w8)),
            TensorSpec("bg_masks", f, (s, num_bg, h8, w8)),
            TensorSpec("fg_invalid", b, (s, "objects")),
        )
        outs = (TensorSpec("fg_desc", f, (s, "objects", c)), TensorSpec("bg_desc", f, (s, num_bg, c)))
    elif stage == "decoder":
        ins = (
            TensorSpec("f4", f, (s, c, h4, w4)),
            TensorSpec("f8", f, (s, c, h8, w8)),
            TensorSpec("fg_hist", f, (s, "objects", "history", c)),
            TensorSpec("bg_hist", f, (s, num_bg, "history", c)),
            TensorSpec("fg_invalid", b, (s, "objects", "history")),
            TensorSpec("bg_invalid", b, (s, num_bg, "history")),
        )
        outs = (TensorSpec("logits", f, (s, f"{1 + num_bg}+objects", h4, w4)),)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return ins, outs


@dataclass(frozen=True)
class _Bounds:
    """Concrete values for the symbolic dimensions, for one point of the range."""

    batch: int
    height: int
    width: int
    objects: int
    history: int
    streams: int = 1

    def resolve(self, dim: int | str) -> int:
        if isinstance(dim, int):
            return dim
        table = {
            "batch": self.batch,
            "streams": self.streams,
            "H": self.height,
            "W": self.width,
            "H/4": self.height // 4,
            "W/4": self.width // 4,
            "H/8": self.height // 8,
            "W/8": self.width // 8,
            "objects": self.objects,
            "history": self.history,
        }
        return table[dim]


def profile_for(specs: tuple[TensorSpec, ...], limits: Limits) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min / opt / max shapes of each input over the limits (TensorRT optimisation profiles)."""
    points = (
        _Bounds(1, limits.min_size, limits.min_size, 1, 1, 1),
        # Tuned for full batches (a chunk of frames, a batch of sessions), as for throughput.
        _Bounds(
            limits.max_batch,
            limits.opt_height,
            limits.opt_width,
            min(4, limits.max_objects),
            limits.max_history,
            limits.max_streams,
        ),
        _Bounds(
            limits.max_batch,
            limits.max_size,
            limits.max_size,
            limits.max_objects,
            limits.max_history,
            limits.max_streams,
        ),
    )
    return {s.name: tuple(tuple(p.resolve(d) for d in s.shape) for p in points) for s in specs}


def example_inputs(
    stage: str, num_bg: int, bounds: _Bounds, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Random inputs of a stage at concrete sizes: features ~N(0,1), masks in [0,1], a few invalid
    entries (history slots, padding objects), the first of each row kept valid."""
    ins, _ = stage_signature(stage, num_bg)
    out = []
    for spec in ins:
        shape = tuple(bounds.resolve(d) for d in spec.shape)
        if spec.dtype == "bool":
            t = torch.rand(shape, generator=generator) < 0.3
            t[..., 0] = False  # keep one valid history slot per descriptor, as the runtime does
        elif spec.name.endswith("_masks"):
            t = torch.rand(shape, generator=generator)
        else:
            t = torch.randn(shape, generator=generator)
        out.append(t)
    return tuple(out)


def _dynamic_shapes(stage: str, limits: Limits) -> dict[str, dict[int, object]]:
    dim = torch.export.Dim
    lo, hi = math.ceil(limits.min_size / SIZE_MULTIPLE), limits.max_size // SIZE_MULTIPLE
    kh, kw = dim("h32", min=lo, max=hi), dim("w32", min=lo, max=hi)
    objects = dim("objects", min=1, max=limits.max_objects)
    history = dim("history", min=1, max=limits.max_history)
    # The graphs' axes span at least the traced sizes (torch.export also refuses an axis of one value,
    # min = max = 1); the manifest's limits, which the runtime checks, may be lower.
    batch = dim("batch", min=1, max=max(TRACE_BATCH, limits.max_batch))
    streams = dim("streams", min=1, max=max(TRACE_STREAMS, limits.max_streams))
    hw4 = {0: streams, 2: 8 * kh, 3: 8 * kw}
    hw8 = {0: streams, 2: 4 * kh, 3: 4 * kw}
    if stage == "backbone":
        return {"images": {0: batch, 2: 32 * kh, 3: 32 * kw}}
    if stage == "encoder":
        return {
            "f8": hw8,
            "fg_masks": {1: objects, **hw8},
            "bg_masks": hw8,
            "fg_invalid": {0: streams, 1: objects},
        }
    return {
        "f4": hw4,
        "f8": hw8,
        "fg_hist": {0: streams, 1: objects, 2: history},
        "bg_hist": {0: streams, 2: history},
        "fg_invalid": {0: streams, 1: objects, 2: history},
        "bg_invalid": {0: streams, 2: history},
    }


def _set_io_shapes(model: onnx.ModelProto, ins: tuple[TensorSpec, ...], outs: tuple[TensorSpec, ...]) -> None:
    """Name the graph's inputs/outputs and their symbolic dimensions as the manifest does."""
    for value, spec in zip(model.graph.input, ins, strict=True):
        _write_shape(value, spec)
    for value, spec in zip(model.graph.output, outs, strict=True):
        _write_shape(value, spec)
    # The exporter's intermediate shapes use its own symbol names; shape inference rewrites them.
    del model.graph.value_info[:]


def _write_shape(value: onnx.ValueInfoProto, spec: TensorSpec) -> None:
    if value.name != spec.name:
        raise RuntimeError(f"exported graph has {value.name!r} where {spec.name!r} was expected")
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(spec.shape):
        raise RuntimeError(f"{spec.name}: exported rank {len(dims)}, expected {len(spec.shape)}")
    for d, want in zip(dims, spec.shape, strict=True):
        if isinstance(want, int):
            if d.HasField("dim_param") or d.dim_value != want:
                raise RuntimeError(f"{spec.name}: exported shape {dims} does not match {spec.shape}")
        else:
            if not d.HasField("dim_param"):
                raise RuntimeError(
                    f"{spec.name}: dimension {want!r} was fixed to {d.dim_value} by the exporter; "
                    "the network specialises on this size"
                )
            d.dim_param = want


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    """``aten.group_norm`` on ``[N, C, H, W]`` as plain ONNX ops, with cascaded means.

    The usual translation (InstanceNormalization) and a single ReduceMean both sum each group
    (C/G·H·W values, ~50 000 on a 1/8 map) in one running float32 accumulator in ONNX Runtime:
    its mean is then off by ~1e-5 relative, and a normalised post-ReLU map by ~1e-4. Averaging
    over W, then H, then the group's channels keeps every running sum short; the result is
    the same mean and (two-pass) variance GroupNorm defines.
    """
    from onnxscript import opset18 as op

    shape = op.Shape(input)
    n, c = op.Shape(input, start=0, end=1), op.Shape(input, start=1, end=2)
    h, w = op.Shape(input, start=2, end=3), op.Shape(input, start=3, end=4)
    x = op.Reshape(input, op.Concat(n, op.Constant(value_ints=[num_groups, -1]), h, w, axis=0))

    def mean(t):
        for axis in (4, 3, 2):
            t = op.ReduceMean(t, op.Constant(value_ints=[axis]), keepdims=1)
        return t

    centred = op.Sub(x, mean(x))
    var = mean(op.Mul(centred, centred))
    y = op.Div(centred, op.Sqrt(op.Add(var, op.CastLike(op.Constant(value_float=eps), var))))
    y = op.Reshape(y, shape)
    per_channel = op.Concat(c, op.Constant(value_ints=[1, 1]), axis=0)
    if weight is not None:
        y = op.Mul(y, op.Reshape(weight, per_channel))
    if bias is not None:
        y = op.Add(y, op.Reshape(bias, per_channel))
    return y


def check_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX's full checker (strict shape inference included), then shapes inferred into the graph."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def export_stage(net: nn.Module, stage: str, cfg: HodorConfig, limits: Limits, opset: int) -> onnx.ModelProto:
    """One stage of ``net`` as a checked, constant-folded fp32 ONNX graph with dynamic axes."""
    num_bg = cfg.model.num_bg_descriptors
    ins, outs = stage_signature(stage, num_bg)
    trace = _Bounds(
        TRACE_BATCH,  # within the traced range even for a limit of 1 (see _dynamic_shapes)
        TRACE_H,
        TRACE_W,
        min(TRACE_OBJECTS, limits.max_objects),
        min(TRACE_HISTORY, limits.max_history),
        TRACE_STREAMS,
    )
    args = example_inputs(stage, num_bg, trace, torch.Generator().manual_seed(0))
    module = STAGE_MODULES[stage](net).eval()
    with _quiet_exporter(), torch.no_grad(), _gathered_windows(net):
        program = torch.onnx.export(
            module,
            args,
            input_names=[s.name for s in ins],
            output_names=[s.name for s in outs],
            dynamic_shapes=_dynamic_shapes(stage, limits),
            opset_version=opset,
            dynamo=True,
            optimize=True,  # constant folding, dead-code and redundant-op removal
            custom_translation_table={torch.ops.aten.group_norm.default: _group_norm},
            external_data=False,
            verbose=False,
        )
    model = program.model_proto
    _set_io_shapes(model, ins, outs)
    model.producer_name = "hodor-export"
    return check_graph(model)


@contextmanager
def _gathered_windows(net: nn.Module) -> Iterator[None]:
    """Trace the Swin windows as index gathers (``SwinTransformer.gather_windows``: the same values,
    fewer and faster passes over the map in graph runtimes); the network is handed back in its
    original form (the default), tracing failed or not."""
    swins = [m for m in net.modules() if isinstance(m, SwinTransformer)]
    for swin in swins:
        swin.gather_windows(True)
    try:
        yield
    finally:
        for swin in swins:
            swin.gather_windows(False)


class _quiet_exporter:
    """The exporter logs and warns at length about things that do not concern the user."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._loggers = {
            n: logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
        }
        self._levels = {n: lg.level for n, lg in self._loggers.items()}
        for lg in self._loggers.values():
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for n, lg in self._loggers.items():
            lg.setLevel(self._levels[n])
        self._warnings.__exit__(*exc)


def save_graph(
    model: onnx.ModelProto, directory: Path, stage: str, precision: str, num_bg: int, limits: Limits
) -> GraphEntry:
    """Write the graph as one self-contained file (weights inside) and describe it for the manifest."""
    path = Path(directory) / graph_filename(stage, precision)
    onnx.save_model(model, path, save_as_external_data=False)
    ins, outs = stage_signature(stage, num_bg)
    return GraphEntry(
        file=path.name,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        inputs=ins,
        outputs=outs,
        profile=profile_for(ins, limits),  # type: ignore[arg-type]
    )


def verify_against_torch(
    net: nn.Module, stage: str, model: onnx.ModelProto, cfg: HodorConfig, limits: Limits, tolerance: float
) -> float | None:
    """Run the graph in ONNX Runtime at sizes other than the traced ones (three streams, two
    objects, two history slots) and compare with torch.

    Returns the max relative error (:func:`hodor.accuracy.relative_error`), or None when ONNX
    Runtime is not installed. Raises RuntimeError above ``tolerance``: a graph
    that does not compute what the network computes is a bug, never shipped.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    num_bg = cfg.model.num_bg_descriptors
    side = max(limits.min_size, 2 * SIZE_MULTIPLE)
    bounds = _Bounds(
        1,
        side + SIZE_MULTIPLE,
        side,
        min(2, limits.max_objects),
        min(2, limits.max_history),
        min(3, limits.max_streams),
    )
    args = example_inputs(stage, num_bg, bounds, torch.Generator().manual_seed(1))
    ins, outs = stage_signature(stage, num_bg)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {s.name: a.numpy() for s, a in zip(ins, args, strict=True)})
    with torch.no_grad():
        want = STAGE_MODULES[stage](net).eval()(*args)
    want = (want,) if isinstance(want, torch.Tensor) else tuple(want)
    worst = 0.0
    for spec, g, w in zip(outs, got, want, strict=True):
        err = relative_error(torch.from_numpy(g), w)
        worst = max(worst, err)
        if not err <= tolerance:
            raise RuntimeError(
                f"exported {stage} graph disagrees with the network on {spec.name}: "
                f"max relative error {err:.2e} > {tolerance:.0e}"
            )
    return worst
