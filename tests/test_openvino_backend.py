"""The OpenVINO backend over an export directory: the seam, fp32 against the torch network, bf16 per
stage, the compiled-model cache, choosing it, and the errors a user can cause.

Relative error as in :mod:`hodor.kernels.testing`: ``max |out − ref| / max |ref|`` over the
reference's finite entries, non-finite entries required to match. fp32 stages within 1e-4 of
the torch network (the limit of the exported ONNX graphs), on fresh random inputs at sizes the
graphs were not traced at; ``--precision bf16`` within 5e-2 per stage (the limit of the torch
backend's bf16), each stage given the same float32 inputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")

from hodor.engine.backends import openvino_backend  # noqa: E402
from hodor.engine.backends.base import Backend, ConfigOverrides  # noqa: E402
from hodor.engine.backends.manifest import MANIFEST_NAME, STAGES, load_manifest  # noqa: E402
from hodor.engine.backends.onnxruntime_backend import usable_cores  # noqa: E402
from hodor.engine.backends.openvino_backend import (  # noqa: E402
    OpenVinoBackend,
    cpu_supports_bf16,
    open_openvino_backend,
)
from hodor.engine.backends.registry import open_backend  # noqa: E402
from hodor.engine.backends.torch_backend import TorchOptions  # noqa: E402
from hodor.errors import HodorError  # noqa: E402
from hodor.export.onnx_export import _Bounds, example_inputs, relative_error  # noqa: E402
from tests.parity_fixture import CASE_A  # noqa: E402
from tests.test_export_shared import ExportRun, shared_export, shared_network  # noqa: E402

FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 5e-2
NUM_BG = 9


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


@pytest.fixture(scope="session")
def net(parity_checkpoint) -> torch.nn.Module:
    return shared_network(parity_checkpoint)


@pytest.fixture(scope="session")
def backend(exported, tmp_path_factory) -> OpenVinoBackend:
    return OpenVinoBackend(exported.directory, cache_dir=tmp_path_factory.mktemp("ov-cache"))


def _has_bf16() -> bool:
    import openvino

    return cpu_supports_bf16(openvino.Core())


def _linked_copy(src: Path, dst: Path) -> Path:
    """An export directory whose graphs are hard links and whose manifest is a copy (caches left out)."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name == MANIFEST_NAME:
            (dst / p.name).write_text(p.read_text())
        elif p.is_file():
            (dst / p.name).hardlink_to(p)
    return dst


def _grid_samples(directory: Path) -> int:
    import onnx

    decoder = onnx.load(str(directory / "decoder.onnx"), load_external_data=False)
    return sum(node.op_type == "GridSample" for node in decoder.graph.node)


def _stage_inputs(seed: int, height: int, width: int, objects: int, history: int):
    gen = torch.Generator().manual_seed(seed)
    (images,) = example_inputs("backbone", NUM_BG, _Bounds(1, height, width, 1, 1), gen)
    enc = example_inputs("encoder", NUM_BG, _Bounds(1, height, width, objects, 1), gen)
    dec = example_inputs("decoder", NUM_BG, _Bounds(1, height, width, objects, history), gen)
    return images, enc, dec


def _chained_inputs(net, seed: int, height: int, width: int):
    """Stage inputs as a frame produces them: an image, its fp32 features, descriptors the fp32
    encoder makes of two masks, and a history of those descriptors (with noise, one slot invalid),
    as the torch backend's half-precision test builds them. Independent random features and
    descriptors are harsher than any frame: on them the torch backend's own bf16 decoder is off
    by about 0.1."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 3, height, width, generator=gen)
    with torch.no_grad():
        f4, f8 = net.backbone(images)
        h, w = f8.shape[-2:]
        fg = torch.zeros(1, 2, h, w)
        fg[0, 0, 1 : h // 2, 1 : w // 2] = 1.0
        fg[0, 1, h // 2 :, w // 2 :] = 0.7
        bg = torch.rand(1, NUM_BG, h, w, generator=gen) * (1.0 - fg.sum(1, keepdim=True))
        fg_desc, bg_desc = net.encode(f8, fg, bg)
    t = 3
    fg_hist = fg_desc[:, :, None].expand(-1, -1, t, -1) + 0.1 * torch.randn(1, 2, t, 256, generator=gen)
    bg_hist = bg_desc[:, :, None].expand(-1, -1, t, -1).contiguous()
    fg_invalid = torch.zeros(1, 2, t, dtype=torch.bool)
    fg_invalid[0, 1, 0] = True
    bg_invalid = torch.zeros(1, NUM_BG, t, dtype=torch.bool)
    bg_invalid[..., -1] = True
    return images, (f8, fg, bg), (f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)


def _errors(backend, net, inputs) -> dict[str, float]:
    images, enc, dec = inputs
    with torch.no_grad():
        want = {"backbone": net.backbone(images), "encoder": net.encode(*enc), "decoder": (net.decode(*dec),)}
    got = {
        "backbone": backend.backbone(images),
        "encoder": backend.encode(*enc),
        "decoder": (backend.decode(*dec),),
    }
    errors = {}
    for stage in STAGES:
        for k, (g, w) in enumerate(zip(got[stage], want[stage], strict=True)):
            assert g.dtype == torch.float32 and g.shape == w.shape, stage
            errors[f"{stage}[{k}]"] = relative_error(g, w)
    return errors


# --------------------------------------------------------------------------- the seam, fp32


def test_backend_implements_the_seam(backend, exported):
    assert isinstance(backend, Backend)
    assert backend.name == "openvino" and backend.device == torch.device("cpu")
    assert backend.precision == "fp32" and set(backend.stage_precisions.values()) == {"fp32"}
    # Every deformable convolution of the exported decoder runs as OpenVINO's own.
    assert backend.deform_convs_rewritten == _grid_samples(exported.directory) > 0
    # The dense 3x3 convolutions of 256 channels run as Winograd: the backbone's two FPN outputs,
    # the decoder's 1/4-map and catch-all ones.
    assert backend.winograd_convs == 4
    # through the engine's operations where they build (here: tests/test_winograd_ops.py builds them)
    assert backend.winograd_ops_convs == (4 if backend.ops_library is not None else 0)
    assert backend.config == load_manifest(exported.directory, verify=False).hodor_config
    assert backend.threads == usable_cores()
    for compiled in backend.compiled.values():
        # OpenVINO's default on bf16-capable CPUs is bf16: fp32 must have been asked for.
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        assert compiled.get_property("INFERENCE_NUM_THREADS") == usable_cores()
    assert backend.startup_s > 0

    f4, f8 = backend.backbone(torch.zeros(1, 3, 64, 96))
    assert f4.shape == (1, 256, 16, 24) and f8.shape == (1, 256, 8, 12) and f4.dtype == torch.float32
    fg, bg = backend.encode(f8, torch.ones(1, 2, 8, 12), torch.rand(1, 9, 8, 12))
    assert fg.shape == (1, 2, 256) and bg.shape == (1, 9, 256)
    invalid = torch.zeros(1, 2, 1, dtype=torch.bool), torch.zeros(1, 9, 1, dtype=torch.bool)
    logits = backend.decode(f4, f8, fg[:, :, None], bg[:, :, None], *invalid)
    assert logits.shape == (1, 12, 16, 24) and torch.isfinite(logits).all()


def test_winograd_layout_follows_the_stage(backend):
    """The backbone's Winograd operations read and write channels first (no Transpose around them:
    OpenVINO's own of its FPN sums was slow), the decoder's channels last (its maps come so)."""
    if backend.ops_library is None:
        pytest.skip("the engine's operations did not build here")
    import onnx

    layouts: dict[str, set[int]] = {}
    for kept in backend.cache_dir.glob("*.onnx"):
        model = onnx.load(str(kept), load_external_data=False)
        tiles = [n for n in model.graph.node if n.op_type == "HodorWinogradTiles"]
        if tiles:
            nchw = {a.i for n in tiles for a in n.attribute if a.name == "nchw"}
            layouts[kept.name.split(".")[0]] = nchw
            transposes = [n for n in model.graph.node if n.op_type == "Transpose" and "/winograd" in n.name]
            assert bool(transposes) == (nchw == {0}), (kept.name, nchw)
    assert layouts == {"backbone": {1}, "decoder": {0}}, layouts


def _kept_chained_means(backend: OpenVinoBackend) -> dict[str, int]:
    """Per kept graph's stage, its ``ReduceMean`` nodes that read another's result."""
    import onnx

    counts = {}
    for kept in backend.cache_dir.glob("*.onnx"):
        nodes = onnx.load(str(kept), load_external_data=False).graph.node
        producer = {out: n.op_type for n in nodes for out in n.output}
        chained = [n for n in nodes if n.op_type == "ReduceMean" and producer.get(n.input[0]) == "ReduceMean"]
        counts[kept.name.split(".")[0]] = len(chained)
    return counts


def test_fp32_group_norms_as_exported(backend):
    """fp32 stages keep the exported means (merged, they summed in an order that moved the
    decoder's logits by 1.3e-4); bf16 ones merge them (below)."""
    counts = _kept_chained_means(backend)
    assert counts["backbone"] > 0 and counts["decoder"] > 0, counts


def test_pixel_rows_moved_as_openvino_moves_them_fastest(backend):
    """The kept encoder graph carries the rows of ``f8`` as Transpose then Reshape (OpenVINO folded
    the exported Transpose into each projection and repeated it)."""
    import onnx

    (kept,) = backend.cache_dir.glob("encoder.*.onnx")
    names = [n.name for n in onnx.load(str(kept), load_external_data=False).graph.node]
    assert sum(name.endswith("/rows") for name in names) == 1, names
    # and each decoder layer's rows made back into a map by a 4-D transposition
    (kept,) = backend.cache_dir.glob("decoder.*.onnx")
    nodes = onnx.load(str(kept), load_external_data=False).graph.node
    assert sum(n.op_type == "Transpose" and n.name.endswith("/nchw") for n in nodes) == 5


def test_outputs_do_not_alias_the_next_call(backend):
    """Each call's outputs are copies: a later call (the next frame) must not overwrite them."""
    f4, f8 = backend.backbone(torch.zeros(1, 3, 64, 64))
    kept = f8.clone()
    backend.backbone(torch.ones(1, 3, 64, 64))
    assert torch.equal(f8, kept)


def test_transient_features_are_the_backbones(backend):
    """``backbone_transient`` gives the backbone's values in the request's own buffers: the same
    values as ``backbone``, and the next call's values once it has run (the loop reads them
    before that)."""
    zeros, ones = torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64)
    f4, f8 = backend.backbone_transient(zeros)
    first = f4.clone()
    want4, want8 = backend.backbone(zeros)
    assert torch.equal(f4, want4) and torch.equal(f8, want8)
    later4, _ = backend.backbone(ones)
    assert not torch.equal(later4, want4)
    assert torch.equal(want4, first)  # backbone() gives copies, which later calls leave alone
    assert torch.equal(f4, later4)  # the transient ones are the buffers the next call overwrote


@pytest.mark.parametrize("height,width,objects,history", [(256, 448, 3, 8), (320, 192, 1, 1)])
def test_fp32_stages_match_torch(backend, net, height, width, objects, history):
    inputs = _stage_inputs(height + objects, height, width, objects, history)
    inputs[2][4][:, -1] = True  # a new object: every history slot invalid, its logits -inf
    errors = _errors(backend, net, inputs)
    bad = {k: f"{v:.3g}" for k, v in errors.items() if not v <= FP32_TOLERANCE}
    assert not bad, f"fp32 relative error above {FP32_TOLERANCE:g}: {bad}"


def test_decoder_as_exported_on_request(exported, net, tmp_path):
    """``native_deform_conv=False`` runs the exported GridSample graph: the same results."""
    plain = OpenVinoBackend(exported.directory, cache_dir=tmp_path, native_deform_conv=False)
    assert plain.deform_convs_rewritten == 0
    errors = _errors(plain, net, _stage_inputs(11, 192, 256, 2, 4))
    assert max(errors.values()) <= FP32_TOLERANCE, errors


def test_direct_convolutions_on_request(exported, net, backend, tmp_path):
    """``winograd=False`` runs the 3x3 convolutions as exported: the same results to fp32
    accuracy, and not the same rounding (the default really computes them another way)."""
    direct = OpenVinoBackend(exported.directory, cache_dir=tmp_path, winograd=False)
    assert direct.winograd_convs == 0
    inputs = _stage_inputs(13, 192, 256, 2, 4)
    errors = _errors(direct, net, inputs)
    assert max(errors.values()) <= FP32_TOLERANCE, errors
    images = inputs[0]
    assert not torch.equal(direct.backbone(images)[0], backend.backbone(images)[0])


def _kept_winograd_tiles(cache_dir) -> set[int]:
    """The ``tile`` attributes of the Winograd operations in the graphs kept in ``cache_dir``."""
    import onnx

    tiles = set()
    for kept in cache_dir.glob("*.onnx"):
        for node in onnx.load(str(kept), load_external_data=False).graph.node:
            if node.op_type == "HodorWinogradTiles":
                tiles |= {a.i for a in node.attribute if a.name == "tile"}
    return tiles


def test_fp32_winograd_f4x4_on_request(exported, net, backend, tmp_path):
    """fp32 stages run F(6x6, 3x3) by default; F(4x4, 3x3) on request, in graphs of their own
    (kept under their own key), both to fp32 accuracy, and not one rounding."""
    if backend.ops_library is None:
        pytest.skip("the engine's operations did not build here")
    assert _kept_winograd_tiles(backend.cache_dir) == {6}
    f4 = OpenVinoBackend(exported.directory, cache_dir=tmp_path, fp32_winograd_tile=4)
    assert f4.winograd_ops_convs == 4 and _kept_winograd_tiles(f4.cache_dir) == {4}
    inputs = _stage_inputs(17, 192, 256, 2, 4)
    errors = _errors(f4, net, inputs)
    assert max(errors.values()) <= FP32_TOLERANCE, errors
    images = inputs[0]
    assert not torch.equal(f4.backbone(images)[0], backend.backbone(images)[0])
    with pytest.raises(ValueError, match="4 or 6"):
        OpenVinoBackend(exported.directory, cache=False, fp32_winograd_tile=3)


# --------------------------------------------------------------------------- bf16


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has neither AVX-512 BF16 nor AMX")
def test_bf16_stages_within_their_limit(exported, net, tmp_path):
    bf16 = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path)
    assert bf16.stage_precisions == {"backbone": "bf16", "encoder": "bf16", "decoder": "bf16"}
    # F(3x3, 3x3) through the engine's operations where they build (F(4x4, 3x3) would lose too much)
    assert bf16.winograd_convs == bf16.winograd_ops_convs == (4 if bf16.ops_library is not None else 0)
    for compiled in bf16.compiled.values():
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
    # The group normalisations' means merged, so that OpenVINO runs them as its MVN.
    assert _kept_chained_means(bf16) == {"backbone": 0, "encoder": 0, "decoder": 0}
    if bf16.ops_library is not None:
        # Every layer's deformable convolution as columns; all but the first read the previous
        # layer's pixel rows, reshaped (no transposition back to channels last).
        import onnx

        (kept,) = bf16.cache_dir.glob("decoder.*.onnx")
        nodes = onnx.load(str(kept), load_external_data=False).graph.node
        columns = [n for n in nodes if n.op_type == "HodorDeformColumns"]
        from_rows = [n for n in nodes if n.op_type == "Reshape" and n.name.endswith("/columns_nhwc")]
        assert len(columns) == 5 and len(from_rows) == 4, (len(columns), len(from_rows))
    inputs = _chained_inputs(net, 7, 256, 448)
    # The third call compiles the encoder and decoder for these shapes.
    for call in ("shape-free", "shape-free", "fixed-shape"):
        errors = _errors(bf16, net, inputs)
        bad = {k: f"{v:.3g}" for k, v in errors.items() if not v <= BF16_TOLERANCE}
        assert not bad, f"bf16 relative error above {BF16_TOLERANCE:g} ({call}): {bad} (all: {errors})"
    assert bf16.static_compiles == 2
    # bf16 really is in use: neither the backbone nor the decoder is computed to fp32 accuracy.
    assert errors["backbone[0]"] > FP32_TOLERANCE and errors["decoder[0]"] > FP32_TOLERANCE, errors


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has neither AVX-512 BF16 nor AMX")
def test_bf16_winograd_f2x2_on_request(exported, net, tmp_path):
    """F(2x2, 3x3) instead of F(3x3, 3x3): graphs of its own (kept under their own key), within the
    limit."""
    f2 = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path, bf16_winograd_tile=2)
    f3 = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path)
    inputs = _chained_inputs(net, 7, 256, 448)
    e2, e3 = _errors(f2, net, inputs), _errors(f3, net, inputs)
    assert all(v <= BF16_TOLERANCE for v in e2.values()), e2
    assert e2["backbone[0]"] != e3["backbone[0]"], (e2, e3)  # not one graph reused for both
    with pytest.raises(ValueError, match="2 or 3"):
        OpenVinoBackend(exported.directory, precision="bf16", cache=False, bf16_winograd_tile=4)


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has neither AVX-512 BF16 nor AMX")
def test_bf16_keeps_a_decoder_it_cannot_rewrite_in_fp32(exported, net, tmp_path, monkeypatch):
    """Without the rewrite, bf16 would round the exported graph's absolute sampling positions:
    that decoder stays fp32."""
    bf16 = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path, native_deform_conv=False)
    assert bf16.stage_precisions == {"backbone": "bf16", "encoder": "bf16", "decoder": "fp32"}
    # The same when no rewrite at all is asked for (the decoder graph is then not even parsed).
    plain = OpenVinoBackend(
        exported.directory, precision="bf16", cache_dir=tmp_path, native_deform_conv=False, winograd=False
    )
    assert plain.stage_precisions == bf16.stage_precisions
    # A decoder graph the rewrite does not recognise: the same fp32 decoder, and the user is told.
    from hodor.engine.backends import native_deform_conv

    def unexpected(model):
        raise native_deform_conv.UnexpectedGraph("not the exporter's shape")

    monkeypatch.setattr(native_deform_conv, "rewrite_deform_convs", unexpected)
    with pytest.warns(RuntimeWarning, match="decoder runs in fp32"):
        other = OpenVinoBackend(exported.directory, precision="bf16", cache_dir=tmp_path)
    assert other.stage_precisions["decoder"] == "fp32"
    errors = _errors(bf16, net, _chained_inputs(net, 7, 256, 448))
    assert errors["decoder[0]"] <= FP32_TOLERANCE, errors


def test_bf16_needs_a_cpu_that_has_it(exported, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_supports_bf16", lambda core: False)
    with pytest.raises(HodorError, match="AVX-512 BF16 or AMX.*--precision fp32"):
        OpenVinoBackend(exported.directory, precision="bf16", cache=False)


def test_unsupported_precision(exported):
    with pytest.raises(HodorError, match="fp32 or bf16"):
        OpenVinoBackend(exported.directory, precision="fp16", cache=False)


# --------------------------------------------------------------------------- fixed-shape compilations


def test_recurring_shapes_get_a_fixed_shape_compilation(exported, net, tmp_path):
    b = OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    blobs = sorted(p.name for p in b.cache_dir.iterdir())
    _, enc, dec = _stage_inputs(11, 128, 192, 2, 4)
    assert openvino_backend.STATIC_SHAPES_AFTER == 3
    first = b.encode(*enc), b.decode(*dec)
    b.encode(*enc), b.decode(*dec)
    assert b.static_compiles == 0  # shapes seen twice run on the shape-free compilation
    second = b.encode(*enc), b.decode(*dec)
    assert b.static_compiles == 2 and b.static_compile_s > 0
    for stage in ("encoder", "decoder"):
        ((shapes, (compiled, _)),) = b._static[stage].items()
        assert all(port.get_partial_shape().is_static for port in compiled.inputs)
        assert [list(port.get_shape()) for port in compiled.inputs] == [list(s) for _, s in shapes]
    third = b.encode(*enc), b.decode(*dec)
    assert b.static_compiles == 2  # made once, then reused
    with torch.no_grad():
        want = (*net.encode(*enc), net.decode(*dec))
    for outputs in (first, second, third):
        got = (*outputs[0], outputs[1])
        for g, w in zip(got, want, strict=True):
            finite = torch.isfinite(w)
            assert torch.equal(torch.isfinite(g), finite)
            assert relative_error(g[finite], w[finite]) <= FP32_TOLERANCE
    assert torch.equal(second[1], third[1])
    # The backbone is not compiled again (no gain measured), and the disk cache did not grow.
    for _ in range(openvino_backend.STATIC_SHAPES_AFTER):
        b.backbone(torch.zeros(1, 3, 64, 96))
    assert b.static_compiles == 2 and "backbone" not in b._static
    assert sorted(p.name for p in b.cache_dir.iterdir()) == blobs


def test_fixed_shape_compilations_are_bounded(exported):
    b = OpenVinoBackend(exported.directory, cache=False)
    histories = range(1, openvino_backend.STATIC_SHAPES_KEPT + 3)
    for history in histories:
        _, _, dec = _stage_inputs(history, 64, 96, 1, history)
        for _ in range(openvino_backend.STATIC_SHAPES_AFTER):
            b.decode(*dec)
    assert b.static_compiles == len(histories)
    kept = b._static["decoder"]
    assert len(kept) == openvino_backend.STATIC_SHAPES_KEPT
    # The most recently used stay: the last histories'.
    newest = list(histories)[-openvino_backend.STATIC_SHAPES_KEPT :]
    assert [dict(shapes)["fg_hist"][2] for shapes in kept] == newest


def test_two_videos_in_turn_compile_only_their_steady_state(exported):
    """Two videos stepped in turn pass through the same growing histories: each length comes twice,
    which compiles nothing; the full window, repeated, is compiled once."""
    b = OpenVinoBackend(exported.directory, cache=False)
    window = 3
    for t in range(window + 4):
        _, _, dec = _stage_inputs(t, 64, 96, 1, min(t, window) + 1)
        for _video in range(2):
            b.decode(*dec)
    assert b.static_compiles == 1
    ((shapes, _),) = b._static["decoder"].items()
    assert dict(shapes)["fg_hist"][2] == window + 1


def test_videos_one_after_another_compile_only_their_steady_state(exported):
    """Videos of one size in sequence pass through the same growing histories, once each: however
    many videos come, only the full window, repeated within each, is compiled, and only once."""
    b = OpenVinoBackend(exported.directory, cache=False)
    window, frames = 3, 7
    for _video in range(6):
        for t in range(frames):
            _, _, dec = _stage_inputs(t, 64, 96, 1, min(t, window) + 1)
            b.decode(*dec)
    assert b.static_compiles == 1
    ((shapes, _),) = b._static["decoder"].items()
    assert dict(shapes)["fg_hist"][2] == window + 1


def test_fixed_shapes_can_be_turned_off(exported):
    b = OpenVinoBackend(exported.directory, cache=False, static_shapes=False)
    _, enc, dec = _stage_inputs(5, 64, 96, 1, 2)
    for _ in range(3):
        b.encode(*enc)
        b.decode(*dec)
    assert b.static_compiles == 0 and not b._static


def test_a_fixed_shape_compilation_that_fails_falls_back(exported, monkeypatch):
    b = OpenVinoBackend(exported.directory, cache=False)
    _, _, dec = _stage_inputs(6, 64, 96, 1, 2)
    want = b.decode(*dec)
    b.decode(*dec)

    def failing(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(b._core, "compile_model", failing, raising=False)
    with pytest.warns(RuntimeWarning, match="fixed input shapes"):
        got = b.decode(*dec)
    assert torch.equal(got, want) and b.static_compiles == 0
    assert torch.equal(b.decode(*dec), want)  # and it does not try again


# --------------------------------------------------------------------------- compiled-model cache


def test_compiled_models_are_cached_and_reused(exported, tmp_path, monkeypatch):
    import openvino

    first = OpenVinoBackend(exported.directory, cache_dir=tmp_path / "c")
    blobs = sorted(p.name for p in first.cache_dir.iterdir())
    assert first.cache_dir.parent == tmp_path / "c"
    assert len([name for name in blobs if name.endswith(".blob")]) == len(STAGES)
    seen = []
    real = openvino.Core.compile_model

    def recording(self, model, device, config):
        seen.append(config.get("CACHE_DIR"))
        return real(self, model, device, config)

    monkeypatch.setattr(openvino.Core, "compile_model", recording)
    second = OpenVinoBackend(exported.directory, cache_dir=tmp_path / "c")
    assert seen == [str(first.cache_dir)] * len(STAGES)
    assert sorted(p.name for p in second.cache_dir.iterdir()) == blobs  # read, not rewritten
    for stage in STAGES:
        assert second.compiled[stage].get_property("LOADED_FROM_CACHE") is True
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    for a, b in zip(first.backbone(image), second.backbone(image), strict=True):
        assert torch.equal(a, b)


def test_cache_directories_unused_for_a_while_are_removed(exported, tmp_path):
    """One directory per OpenVINO version, rewrite version and CPU: those unused for
    CACHE_IDLE_DAYS go when the export is opened, the one in use is marked used and stays."""
    from hodor.engine.backends.export_files import CACHE_IDLE_DAYS

    old = time.time() - (CACHE_IDLE_DAYS + 1) * 86400
    stale, recent = tmp_path / "0123456789abcdef", tmp_path / "fedcba9876543210"
    foreign = tmp_path / "notes"  # not the cache's: a directory named as the cache may hold others
    for d in (stale, recent, foreign):
        (d / "sub").mkdir(parents=True)
        (d / "model.blob").write_bytes(b"x")
    os.utime(stale, (old, old))
    os.utime(foreign, (old, old))
    first = OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([first.cache_dir, recent, foreign])
    os.utime(first.cache_dir, (old, old))
    second = OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    assert second.cache_dir == first.cache_dir and first.cache_dir.stat().st_mtime > old + 86400
    assert sorted(tmp_path.iterdir()) == sorted([first.cache_dir, recent, foreign])


def _kept_rewrites(cache_dir: Path) -> dict[str, dict]:
    return {p.name.split(".")[0]: json.loads(p.read_text()) for p in sorted(cache_dir.glob("*.json"))}


def test_rewritten_graphs_are_kept_and_reused(exported, net, tmp_path, monkeypatch):
    """The graphs, rewritten, are kept in the cache: a second start rewrites nothing, compiles from
    the kept files (OpenVINO's cache finds them by path) and computes the same; other rewrite
    options do not take them."""
    first = OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    kept = _kept_rewrites(first.cache_dir)
    assert sorted(kept) == sorted(STAGES)
    assert sorted(p.name.split(".")[0] for p in first.cache_dir.glob("*.onnx")) == sorted(STAGES)
    assert kept["encoder"]["winograd_convs"] == 0  # no 3x3 convolution: kept as exported
    assert kept["backbone"]["winograd_convs"] > 0 and kept["decoder"]["deform_convs"] > 0
    assert sum(k["winograd_convs"] for k in kept.values()) == first.winograd_convs

    def no_rewriting(*args, **kwargs):
        raise AssertionError("rewritten again")

    monkeypatch.setattr(openvino_backend, "_rewritten", no_rewriting)
    second = OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    assert (second.winograd_convs, second.deform_convs_rewritten) == (
        first.winograd_convs,
        first.deform_convs_rewritten,
    )
    for stage in STAGES:
        assert second.compiled[stage].get_property("LOADED_FROM_CACHE") is True
    inputs = _stage_inputs(17, 128, 192, 2, 3)
    assert max(_errors(second, net, inputs).values()) <= FP32_TOLERANCE
    assert torch.equal(first.decode(*inputs[2]), second.decode(*inputs[2]))
    # Other options are other keys: the direct convolutions are not taken from the Winograd files.
    with pytest.raises(AssertionError, match="rewritten again"):
        OpenVinoBackend(exported.directory, cache_dir=tmp_path, winograd=False)


def test_a_damaged_rewritten_graph_is_rewritten(exported, net, tmp_path, caplog):
    first = OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    (decoder,) = first.cache_dir.glob("decoder.*.onnx")
    for blob in first.cache_dir.glob("*.blob"):  # so that OpenVINO must read the damaged file
        blob.unlink()
    decoder.write_bytes(decoder.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        second = OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    assert "damaged cached graph" in caplog.text
    assert second.deform_convs_rewritten == first.deform_convs_rewritten > 0
    inputs = _stage_inputs(19, 128, 192, 2, 3)
    assert max(_errors(second, net, inputs).values()) <= FP32_TOLERANCE
    # Dropped now, kept whole again at the next start.
    assert not decoder.exists()
    OpenVinoBackend(exported.directory, cache_dir=tmp_path)
    assert decoder.stat().st_size > 1000


def test_fixed_shapes_still_compile_when_the_cache_is_cleaned_while_running(exported, net, tmp_path):
    """The fixed-shape compilations read the kept graph when they are first made; a cache
    directory emptied since the start makes them prepare the graph again, not fail."""
    b = OpenVinoBackend(exported.directory, cache_dir=tmp_path / "c")
    shutil.rmtree(tmp_path / "c")
    _, enc, dec = _stage_inputs(23, 128, 192, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed fixed-shape compile warns
        for _ in range(openvino_backend.STATIC_SHAPES_AFTER):
            got = b.decode(*dec)
            b.encode(*enc)
    assert b.static_compiles == 2
    with torch.no_grad():
        want = net.decode(*dec)
    finite = torch.isfinite(want)
    assert relative_error(got[finite], want[finite]) <= FP32_TOLERANCE


def test_default_cache_is_inside_the_export(exported, tmp_path):
    d = _linked_copy(exported.directory, tmp_path / "m.hodor")
    b = OpenVinoBackend(d)
    assert b.cache_dir is not None and b.cache_dir.parent == d / "openvino-cache"


def test_unwritable_cache_only_warns(exported, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        b = OpenVinoBackend(exported.directory, cache_dir=blocker / "cache")
    assert b.cache_dir is None and "no cache" in caplog.text
    assert b.backbone(torch.zeros(1, 3, 64, 64))[0].shape == (1, 256, 16, 16)


# --------------------------------------------------------------------------- errors, choosing it


def test_gpu_device_is_refused(exported):
    with pytest.raises(HodorError, match="runs on the CPU.*--device cpu"):
        OpenVinoBackend(exported.directory, device="cuda", cache=False)


def test_graph_that_no_longer_matches_its_sha256(tmp_path, exported):
    d = _linked_copy(exported.directory, tmp_path / "bad.hodor")
    graph = d / "decoder.onnx"
    data = graph.read_bytes()
    graph.unlink()
    graph.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(HodorError, match="decoder.onnx does not match its sha256"):
        OpenVinoBackend(d, cache=False)


def test_not_installed_says_how_to_install(exported, monkeypatch):
    def missing():
        raise HodorError("OpenVINO is not installed: pip install hodor-engine[openvino]")

    monkeypatch.setattr(openvino_backend, "_import_openvino", missing)
    with pytest.raises(HodorError, match=r"hodor-engine\[openvino\]"):
        open_backend(exported.directory, "openvino", "cpu")
    assert open_backend(exported.directory, "auto", "cpu").name == "onnxruntime"
    with pytest.raises(HodorError, match=r"hodor-engine\[openvino\]"):
        open_backend(exported.directory, "auto", "cpu", torch_options=TorchOptions(precision="bf16"))


def test_without_onnx_says_how_to_install(exported, tmp_path, monkeypatch):
    """The rewrites need the onnx package (in the openvino extra): its absence is a clear error,
    which ``--backend auto`` passes over to ONNX Runtime."""
    d = _linked_copy(exported.directory, tmp_path / "m.hodor")  # no graphs kept from earlier tests
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(HodorError, match=r"onnx package.*hodor-engine\[openvino\]"):
        OpenVinoBackend(d)
    assert open_backend(d, "auto", "cpu").name == "onnxruntime"


def test_auto_on_the_cpu(exported, monkeypatch):
    """On the CPU: OpenVINO (the faster of the two there), in fp32 and bf16; ONNX Runtime where
    OpenVINO is missing. Where a GPU may be used, ONNX Runtime (which runs there) before it."""
    from hodor.engine.backends import onnxruntime_backend, registry

    b = open_backend(exported.directory, "auto", "cpu", ConfigOverrides(min_dim=256))
    assert b.name == "openvino" and b.precision == "fp32"
    assert (b.config.input.min_dim, b.config.input.max_dim) == (256, 494)
    if _has_bf16():
        b = open_backend(exported.directory, "auto", "cpu", torch_options=TorchOptions(precision="bf16"))
        assert b.name == "openvino" and b.precision == "bf16"

    assert registry._auto_order("cpu") == ["tensorrt", "openvino", "onnxruntime"]
    assert registry._auto_order("cuda") == ["tensorrt", "onnxruntime", "openvino"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert registry._auto_order(None) == ["tensorrt", "onnxruntime", "openvino"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert registry._auto_order(None) == ["tensorrt", "openvino", "onnxruntime"]

    def missing():
        raise HodorError("OpenVINO is not installed")

    monkeypatch.setattr(openvino_backend, "_import_openvino", missing)
    assert open_backend(exported.directory, "auto", "cpu").name == "onnxruntime"

    def ort_missing():
        raise HodorError("ONNX Runtime is not installed")

    monkeypatch.setattr(onnxruntime_backend, "_import_ort", ort_missing)
    with pytest.raises(HodorError, match="no backend could open.*OpenVINO is not installed"):
        open_backend(exported.directory, "auto", "cpu")


def test_precision_reaches_the_export_backends(exported, monkeypatch):
    opened = []
    monkeypatch.setattr(
        openvino_backend,
        "OpenVinoBackend",
        lambda *a, **k: opened.append(k["precision"]) or "openvino-stand-in",
    )
    assert open_backend(exported.directory, "auto", "cpu", torch_options=TorchOptions(precision="bf16")) == (
        "openvino-stand-in"
    )
    assert opened == ["bf16"]
    # ONNX Runtime picks the export's fp16 graphs; it has no bf16.
    b = open_backend(exported.directory, "onnxruntime", "cpu", torch_options=TorchOptions(precision="fp16"))
    assert b.name == "onnxruntime" and b.precision == "fp16"
    with pytest.raises(
        HodorError, match="--precision bf16 with an export directory: the onnxruntime backend does not"
    ):
        open_backend(exported.directory, "onnxruntime", "cpu", torch_options=TorchOptions(precision="bf16"))
    with pytest.raises(
        HodorError, match="--precision bf16 with an export directory: the tensorrt backend does not"
    ):
        open_backend(exported.directory, "tensorrt", "cpu", torch_options=TorchOptions(precision="bf16"))


def test_opener_applies_overrides(exported):
    b = open_openvino_backend(exported.directory, "cpu", ConfigOverrides(min_dim=256))
    assert (b.config.input.min_dim, b.config.input.max_dim) == (256, 494)


def test_hodor_run_with_openvino(exported, tmp_path):
    video = CASE_A / "video"
    argv = [
        *(sys.executable, "-m", "hodor.engine.cli", str(video / "JPEGImages" / "synth")),
        *("--masks", str(video / "Annotations" / "synth" / "00000.png"), "--no-overlay"),
        *("--model", str(exported.directory), "--out", str(tmp_path / "out"), "--min-dim", "64"),
    ]
    proc = subprocess.run([*argv, "--backend", "openvino", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "backend openvino (cpu)" in proc.stdout.strip().splitlines()[-1]
    proc = subprocess.run(
        [*argv, "--precision", "fp16", "--backend", "openvino"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "--precision fp16 with an export directory: the openvino backend does not take it" in proc.stderr
