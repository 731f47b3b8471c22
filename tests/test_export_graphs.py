"""The exported stage graphs against the torch network they came from, and their manifest.

Relative error, everywhere in these tests: ``max |onnx - torch| / max |torch|`` per output
tensor, over the entries where the torch output is finite; non-finite entries (the ``-inf``
logits of a descriptor whose whole history is invalid) must match exactly. fp32 graphs must
stay within 1e-4, fp16 graphs within 1e-2, on fresh random inputs at two frame sizes and
several object counts and history lengths (none of them the size the graphs were traced at).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import torch

import hodor
from hodor.accuracy import relative_error
from hodor.config import config_beside
from hodor.engine.backends.manifest import FORMAT_VERSION, STAGES, Manifest, load_manifest, sha256_file
from hodor.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from hodor.errors import HodorError
from hodor.export.onnx_export import STAGE_MODULES, TRACE_H, TRACE_W, _Bounds, example_inputs
from tests.test_export_shared import ExportRun, shared_export, shared_network

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
NUM_BG = 9

# (batch, H, W) of the padded frame; (H, W, objects, history) for encode/decode.
BACKBONE_CASES = [(2, 256, 448), (1, 320, 192)]
ENCODER_CASES = [(256, 448, 1), (192, 320, 3), (320, 192, 7), (256, 448, 32)]
DECODER_CASES = [(256, 448, 1, 1), (192, 320, 3, 8), (320, 192, 7, 17)]


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


@pytest.fixture(scope="session")
def net(parity_checkpoint) -> torch.nn.Module:
    return shared_network(parity_checkpoint)


@pytest.fixture(scope="session")
def backends(exported) -> dict[str, OnnxRuntimeBackend | str]:
    """ONNX Runtime (CPU) on each precision's graphs; for one it cannot run, the reason instead."""
    out: dict[str, OnnxRuntimeBackend | str] = {}
    for precision in ("fp32", "fp16"):
        try:
            out[precision] = OnnxRuntimeBackend(exported.directory, precision=precision)
        except HodorError as exc:
            missing = re.findall(r"implementation for (\w+)\(", str(exc))
            out[precision] = (
                f"ONNX Runtime's CPU provider cannot run {', '.join(missing) or exc} in {precision}"
            )
    return out


def _backend(backends, precision: str) -> OnnxRuntimeBackend:
    b = backends[precision]
    if isinstance(b, str):
        pytest.skip(b)
    return b


def _compare(got, want, tolerance: float, what: str) -> list[float]:
    got = (got,) if isinstance(got, torch.Tensor) else tuple(got)
    want = (want,) if isinstance(want, torch.Tensor) else tuple(want)
    errors = []
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape, what
        errors.append(relative_error(g, w))
    assert max(errors) <= tolerance, f"{what}: relative errors {errors} > {tolerance}"
    return errors


def _tolerance(precision: str) -> float:
    return FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("batch,height,width", BACKBONE_CASES)
def test_backbone_graph_matches_torch(backends, net, precision, batch, height, width):
    backend = _backend(backends, precision)
    (images,) = example_inputs(
        "backbone", NUM_BG, _Bounds(batch, height, width, 1, 1), torch.Generator().manual_seed(height)
    )
    with torch.no_grad():
        want = net.backbone(images)
    _compare(backend.backbone(images), want, _tolerance(precision), f"backbone {precision} {images.shape}")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("height,width,objects", ENCODER_CASES)
def test_encoder_graph_matches_torch(backends, net, precision, height, width, objects):
    backend = _backend(backends, precision)
    gen = torch.Generator().manual_seed(height + objects)
    f8, fg, bg, fg_invalid = example_inputs("encoder", NUM_BG, _Bounds(1, height, width, objects, 1), gen)
    fg[:, 0] = 0.2  # an object with no pixel > 0.5: the arg-max fallback
    bg[:, 1] = 0.0  # an empty background cell: zeros
    with torch.no_grad():
        want = net.encode(f8, fg, bg, fg_invalid)
    got = backend.encode(f8, fg, bg, fg_invalid)
    _compare(got, want, _tolerance(precision), f"encoder {precision} {fg.shape}")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_encoder_and_decoder_graphs_take_a_batch_of_streams(backends, net, precision):
    """Three streams with padding objects (and, in decode, padding history slots) marked invalid."""
    backend = _backend(backends, precision)
    bounds = _Bounds(1, 192, 320, 3, 4, streams=3)
    for stage in ("encoder", "decoder"):
        args = example_inputs(stage, NUM_BG, bounds, torch.Generator().manual_seed(11))
        args[3 if stage == "encoder" else 4][1:, 2] = True  # streams 1, 2: two objects and a padding one
        with torch.no_grad():
            want = STAGE_MODULES[stage](net)(*args)
        got = backend.encode(*args) if stage == "encoder" else backend.decode(*args)
        _compare(got, want, _tolerance(precision), f"{stage} {precision}, 3 streams")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("height,width,objects,history", DECODER_CASES)
def test_decoder_graph_matches_torch(backends, net, precision, height, width, objects, history):
    backend = _backend(backends, precision)
    gen = torch.Generator().manual_seed(height + objects + history)
    args = example_inputs("decoder", NUM_BG, _Bounds(1, height, width, objects, history), gen)
    fg_invalid = args[4]
    fg_invalid[:, -1] = True  # a new object: every history slot invalid, logits -inf
    with torch.no_grad():
        want = net.decode(*args)
    assert torch.isneginf(want[:, -1]).all()
    _compare(backend.decode(*args), want, _tolerance(precision), f"decoder {precision} {args[2].shape}")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_decoder_graph_over_an_empty_history_matches_torch(backends, net, precision):
    """Every history entry invalid (what a padded slot of a batched call holds): the attention adds
    nothing (hodor.kernels.pixel_descriptor_attention), so the catch-all map stays finite and every
    descriptor's logits are -inf, in the graph as in the network; not NaN."""
    backend = _backend(backends, precision)
    args = example_inputs("decoder", NUM_BG, _Bounds(1, 192, 320, 2, 3), torch.Generator().manual_seed(7))
    args[4][:] = True
    args[5][:] = True
    with torch.no_grad():
        want = net.decode(*args)
    assert torch.isfinite(want[:, 0]).all() and torch.isneginf(want[:, 1:]).all()
    _compare(backend.decode(*args), want, _tolerance(precision), f"decoder {precision}, empty history")


def test_backbone_graph_moves_windows_by_gathers(exported):
    """The backbone is traced in its gather form (hodor.model.swin): each of the 12 Swin blocks
    gathers its tokens into windows and back (no pad, roll or crop of the map). The numerics
    tests above hold it to the network in its original form."""
    m = load_manifest(exported.directory, verify=False)
    model = onnx.load(str(exported.directory / m.graph("backbone").file), load_external_data=False)
    kinds = [node.op_type for node in model.graph.node]
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and helper_attr(n, "axis") == 1]
    assert len(gathers) == 2 * 12, kinds.count("Gather")
    # What pads remain are the patch embedding's and the three patch mergings'.
    assert kinds.count("Pad") <= 4


def test_the_export_hands_the_network_back_in_its_original_form():
    from hodor.export.onnx_export import _gathered_windows
    from hodor.model.swin import SwinTransformer

    holder = torch.nn.Sequential(SwinTransformer())
    swin = holder[0]
    with _gathered_windows(holder):
        assert all(s.by_gathers for s in swin.layers)
        assert all(s.downsample.by_transposition for s in swin.layers[:-1])
    assert not any(s.by_gathers for s in swin.layers)
    with pytest.raises(RuntimeError), _gathered_windows(holder):
        raise RuntimeError("tracing failed")
    assert not any(s.by_gathers or (s.downsample and s.downsample.by_transposition) for s in swin.layers)
    assert not any(s.project_map_tokens for s in swin.layers)


def helper_attr(node: onnx.NodeProto, name: str) -> object:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), 0)


def test_graphs_were_traced_at_another_size():
    """The comparisons above would not prove the spatial axes dynamic at the traced size."""
    sizes = {(h, w) for _, h, w in BACKBONE_CASES} | {(h, w) for h, w, *_ in ENCODER_CASES + DECODER_CASES}
    assert (TRACE_H, TRACE_W) not in sizes


# --------------------------------------------------------------------------- graphs and manifest


def test_manifest_describes_the_export(exported, parity_checkpoint):
    m = load_manifest(exported.directory)  # verifies every graph's sha256
    assert (m.format_version, m.hodor_version) == (FORMAT_VERSION, hodor.__version__)
    assert m.precision == "fp16" and m.precisions == ("fp32", "fp16") and m.io_dtype == "float32"
    assert m.opset == 20
    assert m.hodor_config == config_beside(parity_checkpoint)
    assert m.preprocessing["color_order"] == "rgb" and m.preprocessing["min_dim"] == 448
    assert m.checkpoint["sha256"] == sha256_file(parity_checkpoint)
    lim = m.limits
    assert (lim.max_objects, lim.max_history, lim.max_window, lim.max_batch) == (32, 17, 16, 16)
    assert lim.max_streams == 16
    assert (lim.min_size, lim.max_size, lim.opt_height, lim.opt_width) == (64, 1024, 448, 800)
    for precision in m.precisions:
        for stage in STAGES:
            entry = m.graph(stage, precision)
            path = exported.directory / entry.file
            assert path.stat().st_size == entry.bytes and sha256_file(path) == entry.sha256
            assert set(entry.profile) == {s.name for s in entry.inputs}
    image = m.graph("backbone").profile["images"]
    assert image == ((1, 3, 64, 64), (16, 3, 448, 800), (16, 3, 1024, 1024))
    fg_hist = m.graph("decoder", "fp16").profile["fg_hist"]
    assert fg_hist == ((1, 1, 1, 256), (16, 4, 17, 256), (16, 32, 17, 256))
    assert m.graph("encoder").profile["fg_invalid"] == ((1, 1), (16, 4), (16, 32))
    assert [s.shape for s in m.graph("decoder").outputs] == [("streams", "10+objects", "H/4", "W/4")]
    assert set(m.dynamic_axes) >= {"batch", "streams", "H", "W", "objects", "history"}
    assert "1..17" in m.dynamic_axes["history"] and "1..32" in m.dynamic_axes["objects"]
    assert "1..16" in m.dynamic_axes["streams"]


def test_export_reports_progress_and_a_summary(exported):
    lines = exported.lines
    for k, stage in enumerate(STAGES, 1):
        assert any(line.startswith(f"[{k}/3] {stage}: fp32 ") and "fp16" in line for line in lines), lines
    summary = lines[-1]
    assert (
        summary.startswith("hodor-export: fp32+fp16 graphs (backbone ") and str(exported.directory) in summary
    )
    assert re.search(r"in \d+\.\d s", summary)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("stage", STAGES)
def test_graph_passes_the_full_checker_with_named_dynamic_axes(exported, stage, precision):
    m = load_manifest(exported.directory, verify=False)
    entry = m.graph(stage, precision)
    path = exported.directory / entry.file
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    elem = {"float32": onnx.TensorProto.FLOAT, "bool": onnx.TensorProto.BOOL}
    for values, specs in ((model.graph.input, entry.inputs), (model.graph.output, entry.outputs)):
        assert [v.name for v in values] == [s.name for s in specs]
        for v, spec in zip(values, specs, strict=True):
            assert v.type.tensor_type.elem_type == elem[spec.dtype]  # fp16 graphs keep fp32 edges
            dims = tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
            assert dims == spec.shape


def test_fp16_graphs_compute_in_half_and_keep_sensitive_parts_in_fp32(exported):
    """Heavy products in fp16; statistics, softmax and pooled sums in fp32 (see hodor.export.onnx_fp16)."""
    from hodor.export.onnx_fp16 import _tensor_types

    kinds: dict[str, set[int]] = {}
    for stage in STAGES:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(exported.directory / f"{stage}.fp16.onnx")))
        types = _tensor_types(model)
        for node in model.graph.node:
            float_ins = {types[i] for i in node.input if i and types.get(i) in (1, 10)}
            kinds.setdefault(node.op_type, set()).update(float_ins)
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert kinds["Conv"] == {fp16}
    assert fp16 in kinds["MatMul"]
    for op in ("Softmax", "LayerNormalization", "ReduceMean", "GridSample"):
        assert kinds[op] == {fp32}, op
    assert "InstanceNormalization" not in kinds  # GroupNorm is exported with cascaded means


def test_graph_files_are_smaller_in_fp16(exported):
    m = load_manifest(exported.directory, verify=False)
    for stage in STAGES:
        assert m.graph(stage, "fp16").bytes < 0.7 * m.graph(stage, "fp32").bytes


def test_manifest_round_trips_and_no_partial_directory_is_left(exported):
    m = load_manifest(exported.directory, verify=False)
    assert Manifest.from_dict(json.loads(m.to_json())) == m
    assert [p.name for p in Path(exported.directory).parent.iterdir()] == [exported.directory.name]
