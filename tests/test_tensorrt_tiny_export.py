"""A tiny stand-in export: three small ONNX graphs with the real stages' signatures, and a manifest.

The graphs are not HODOR (a strided convolution for the backbone, mask pooling and a
matrix product for the encoder, a resize, masked max over history and matrix products
for the decoder), but their inputs, outputs, symbolic axes, edge types and optimisation
profiles are exactly those of ``hodor.export.onnx_export.stage_signature``, so the
TensorRT build and runtime code is exercised on the same contract in seconds. The fp16
variants compute in fp16 and cast at their edges, like the exporter's fp16 graphs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hodor
from hodor.config import CHANNELS as C
from hodor.config import HodorConfig, official_defaults, parse_config
from hodor.engine.backends.manifest import (
    STAGES,
    GraphEntry,
    Limits,
    Manifest,
    TensorRTRecord,
    write_manifest,
)
from hodor.export.onnx_export import save_graph, stage_signature

NUM_BG = 9
TINY_LIMITS = Limits(
    max_objects=4,
    max_history=3,
    max_batch=2,
    min_size=64,
    max_size=256,
    opt_height=128,
    opt_width=192,
    max_streams=3,
)
_ELEM = {"float32": TensorProto.FLOAT, "bool": TensorProto.BOOL}


def _value_info(spec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(spec.name, _ELEM[spec.dtype], list(spec.shape))


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _stage_nodes(stage: str, dtype: np.dtype, rng: np.random.Generator):
    """Nodes and initialisers computing ``stage`` on inputs ``x_<name>`` (already cast to ``dtype``)."""

    def w(*shape: int) -> onnx.TensorProto:
        """A random weight of ``shape`` scaled by fan-in, under a unique name."""
        data = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(dtype)
        return _const(f"w{len(shape)}_{rng.integers(1 << 30)}", data)

    flat = _const("flat", np.array([0, 0, -1], dtype=np.int64))
    if stage == "backbone":
        w4, w8 = w(C, 3, 4, 4), w(C, C, 1, 1)
        nodes = [
            helper.make_node("Conv", ["x_images", w4.name], ["c4"], strides=[4, 4]),
            helper.make_node("Relu", ["c4"], ["y_f4"]),
            helper.make_node("AveragePool", ["y_f4"], ["p8"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Conv", ["p8", w8.name], ["y_f8"]),
        ]
        return nodes, [w4, w8]
    if stage == "encoder":
        wf, wb = w(C, C), w(C, C)
        nodes = [
            helper.make_node("Reshape", ["x_f8", "flat"], ["f8_flat"]),  # [S,C,hw]
            helper.make_node("Transpose", ["f8_flat"], ["pix"], perm=[0, 2, 1]),  # [S,hw,C]
        ]
        for side, weight in (("fg", wf), ("bg", wb)):
            out = "fg_raw" if side == "fg" else "y_bg_desc"
            nodes += [
                helper.make_node("Reshape", [f"x_{side}_masks", "flat"], [f"{side}_flat"]),
                helper.make_node("MatMul", [f"{side}_flat", "pix"], [f"{side}_pooled"]),
                helper.make_node("MatMul", [f"{side}_pooled", weight.name], [out]),
            ]
        # Padding objects' descriptors are zeroed (the real encoder leaves them out of its self-attention).
        nodes += [
            helper.make_node("Unsqueeze", ["x_fg_invalid", "last"], ["fg_pad"]),
            helper.make_node("Where", ["fg_pad", "zero", "fg_raw"], ["y_fg_desc"]),
        ]
        zero = _const("zero", np.zeros((), dtype=dtype))
        return nodes, [flat, wf, wb, zero, _const("last", np.array([-1], dtype=np.int64))]
    # decoder
    wf, wb, wc = w(C, C), w(C, C), w(1, C, 1, 1)
    scales = _const("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    zero = _const("zero", np.zeros((), dtype=dtype))
    nodes = [
        helper.make_node("Resize", ["x_f8", "", "scales"], ["up"], mode="linear"),
        helper.make_node("Add", ["up", "x_f4"], ["x"]),
        helper.make_node("Reshape", ["x", "flat"], ["x_flat"]),  # [1,C,HW4]
        helper.make_node("Conv", ["x", wc.name], ["catch"]),
        helper.make_node("Reshape", ["catch", "flat"], ["catch_flat"]),
    ]
    for side, weight in (("fg", wf), ("bg", wb)):
        nodes += [
            helper.make_node("Unsqueeze", [f"x_{side}_invalid", "last"], [f"{side}_inv4"]),
            helper.make_node("Where", [f"{side}_inv4", "zero", f"x_{side}_hist"], [f"{side}_valid"]),
            helper.make_node("ReduceMax", [f"{side}_valid", "axis2"], [f"{side}_max"], keepdims=0),
            helper.make_node("MatMul", [f"{side}_max", weight.name], [f"{side}_proj"]),
            helper.make_node("MatMul", [f"{side}_proj", "x_flat"], [f"{side}_logits"]),
        ]
    nodes += [
        helper.make_node("Concat", ["catch_flat", "bg_logits", "fg_logits"], ["all_flat"], axis=1),
        helper.make_node("Shape", ["x_f4"], ["hw4"], start=2),
        helper.make_node("Concat", ["keep_minus1", "hw4"], ["out_shape"], axis=0),
        helper.make_node("Reshape", ["all_flat", "out_shape"], ["y_logits"]),
    ]
    consts = [
        flat,
        scales,
        zero,
        wf,
        wb,
        wc,
        _const("last", np.array([-1], dtype=np.int64)),
        _const("axis2", np.array([2], dtype=np.int64)),
        _const("keep_minus1", np.array([0, -1], dtype=np.int64)),  # 0: the streams axis as it is
    ]
    return nodes, consts


def tiny_stage_graph(stage: str, precision: str, seed: int = 0) -> onnx.ModelProto:
    """A checked tiny graph for ``stage`` with the real signature; fp16 computes in fp16 inside."""
    dtype = np.float16 if precision == "fp16" else np.float32
    ins, outs = stage_signature(stage, NUM_BG)
    rng = np.random.default_rng(seed)
    body, consts = _stage_nodes(stage, dtype, rng)
    to = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    edges_in = [
        helper.make_node("Cast", [s.name], [f"x_{s.name}"], to=to)
        if s.dtype == "float32"
        else helper.make_node("Identity", [s.name], [f"x_{s.name}"])
        for s in ins
    ]
    edges_out = [helper.make_node("Cast", [f"y_{s.name}"], [s.name], to=TensorProto.FLOAT) for s in outs]
    graph = helper.make_graph(
        edges_in + body + edges_out,
        f"tiny_{stage}_{precision}",
        [_value_info(s) for s in ins],
        [_value_info(s) for s in outs],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_config() -> HodorConfig:
    """The official defaults (9 background descriptors, as the graphs assume)."""
    cfg = parse_config(official_defaults())
    assert cfg.model.num_bg_descriptors == NUM_BG
    return cfg


def write_tiny_export(
    directory: Path,
    precision: str = "fp32",
    limits: Limits = TINY_LIMITS,
    seeds: dict[str, int] | None = None,
) -> Manifest:
    """Write the tiny graphs (fp32 always, fp16 too for ``precision="fp16"``) and ``manifest.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = seeds or {}
    graphs: dict[str, dict[str, GraphEntry]] = {}
    for prec in ("fp32", "fp16") if precision == "fp16" else ("fp32",):
        graphs[prec] = {}
        for stage in STAGES:
            graph = tiny_stage_graph(stage, prec, seeds.get(stage, 0))
            graphs[prec][stage] = save_graph(graph, directory, stage, prec, NUM_BG, limits)  # as the exporter
    manifest = Manifest(
        hodor_version=hodor.__version__,
        opset=18,
        precision=precision,
        io_dtype="float32",
        config=tiny_config().to_dict(),
        preprocessing={},
        limits=limits,
        graphs=graphs,
        exporter={"tool": "tiny test graphs"},
        checkpoint={"name": "tiny", "sha256": ""},
    )
    write_manifest_json(directory, manifest, None)
    return manifest


def write_manifest_json(directory: Path, manifest: Manifest, tensorrt: TensorRTRecord | None) -> None:
    """``manifest.json`` with the ``tensorrt`` section the exporter stores beside the rest."""
    write_manifest(directory, with_tensorrt(manifest, tensorrt))


def with_tensorrt(manifest: Manifest, record: TensorRTRecord | None) -> Manifest:
    """The manifest carrying its ``tensorrt`` section, as the runtime reads it."""
    return replace(manifest, tensorrt=record)


# --------------------------------------------------------------------------- the helper's own checks


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tiny_graphs_run_in_onnxruntime_with_the_stage_shapes(precision):
    """The stand-in graphs are valid and produce the seam's output shapes at a non-trivial size."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    H, W, I, T, S = 96, 160, 3, 2, 2  # S: streams (videos per encode/decode call)
    feeds = {
        "backbone": {"images": rng.standard_normal((2, 3, H, W), dtype=np.float32)},
        "encoder": {
            "f8": rng.standard_normal((S, C, H // 8, W // 8), dtype=np.float32),
            "fg_masks": rng.random((S, I, H // 8, W // 8), dtype=np.float32),
            "bg_masks": rng.random((S, NUM_BG, H // 8, W // 8), dtype=np.float32),
            "fg_invalid": np.array([[False] * I, [False] + [True] * (I - 1)]),
        },
        "decoder": {
            "f4": rng.standard_normal((S, C, H // 4, W // 4), dtype=np.float32),
            "f8": rng.standard_normal((S, C, H // 8, W // 8), dtype=np.float32),
            "fg_hist": rng.standard_normal((S, I, T, C), dtype=np.float32),
            "bg_hist": rng.standard_normal((S, NUM_BG, T, C), dtype=np.float32),
            "fg_invalid": rng.random((S, I, T)) < 0.3,
            "bg_invalid": rng.random((S, NUM_BG, T)) < 0.3,
        },
    }
    want = {
        "backbone": [(2, C, H // 4, W // 4), (2, C, H // 8, W // 8)],
        "encoder": [(S, I, C), (S, NUM_BG, C)],
        "decoder": [(S, 1 + NUM_BG + I, H // 4, W // 4)],
    }
    for stage in STAGES:
        model = tiny_stage_graph(stage, precision)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, feeds[stage])
        assert [g.shape for g in got] == want[stage], stage
        assert all(g.dtype == np.float32 and np.isfinite(g).all() for g in got), stage
