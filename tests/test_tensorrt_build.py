"""Building TensorRT engines from the stage graphs, on a machine with no GPU (TensorRT for RTX).

The builds here are real: TensorRT for RTX parses the ONNX graphs with TensorRT's parser and
compiles them ahead of time for its compute-capability targets. What needs a GPU (running
an engine) is in ``test_tensorrt_runtime.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from hodor.engine.backends.manifest import STAGES, graph_filename, load_manifest, sha256_file
from hodor.engine.backends.tensorrt.flavours import load_flavour
from hodor.engine.backends.tensorrt.validity import check_engine_header, header_diagnostics, probe_engines
from hodor.errors import HodorError
from hodor.export.tensorrt_build import (
    build_engine,
    build_engines,
    default_targets,
    engine_filename,
    resolve_flavour,
)
from tests.test_export_shared import ExportRun, shared_export
from tests.test_tensorrt_tiny_export import (
    TINY_LIMITS,
    tiny_stage_graph,
    with_tensorrt,
    write_manifest_json,
    write_tiny_export,
)

trt = pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install tensorrt-rtx-cu13)"
)


class Progress(list):
    """Collects the progress lines of a build."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def about(self, stage: str) -> str:
        return " | ".join(line for line in self if line.startswith(f"tensorrt: {stage}:"))


def export_and_build(directory: Path, precision: str = "fp32", **kwargs):
    """Tiny export + RTX engines + manifest.json with its tensorrt section, as hodor-export leaves it."""
    manifest = write_tiny_export(directory, precision, **kwargs)
    progress = Progress()
    record = build_engines(directory, manifest, "rtx", "on", progress=progress)
    write_manifest_json(directory, manifest, record)
    return manifest, record, progress


def reexport(old: Path, precision: str = "fp32", targets=None, **kwargs):
    """Export again over ``old`` the way hodor-export does: into a fresh directory that holds
    hard links to the earlier export's other files, building with ``previous_dir=old``,
    then swapped into place."""
    new = old.with_name(old.name + ".partial")
    shutil.rmtree(new, ignore_errors=True)
    manifest = write_tiny_export(new, precision, **kwargs)
    for engine in old.glob("*.engine"):
        os.link(engine, new / engine.name)
    progress = Progress()
    record = build_engines(new, manifest, "rtx", "on", previous_dir=old, targets=targets, progress=progress)
    write_manifest_json(new, manifest, record)
    shutil.rmtree(old)
    new.rename(old)
    return manifest, record, progress


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_builds_the_three_engines_with_the_manifests_profiles(tmp_path, precision):
    manifest, record, progress = export_and_build(tmp_path, precision)

    flavour = load_flavour("rtx")
    assert record.flavour == "rtx"
    assert record.version == trt.__version__ == flavour.version
    assert record.precision == precision
    assert record.gpu is None
    assert record.targets == default_targets(flavour)
    assert "sm_86" in record.targets and "sm_75" not in record.targets
    for stage in STAGES:
        entry = record.engines[stage]
        graph = manifest.graph(stage, precision)
        path = tmp_path / entry.file
        assert entry.file == engine_filename(stage, precision) == f"{stage}.{precision}.engine"
        assert path.is_file() and path.stat().st_size > 100_000
        assert entry.onnx == graph.file
        assert entry.onnx_sha256 == graph.sha256
        assert entry.engine_sha256 == sha256_file(path)
        assert entry.profile == {k: [list(s) for s in v] for k, v in graph.profile.items()}
        assert "building" in progress.about(stage) and "built" in progress.about(stage)
    # The profile spans the limits: objects 1..max, history 1..max_window+1, sides min..max.
    fg_hist = record.engines["decoder"].profile["fg_hist"]
    assert fg_hist[0][1:3] == [1, 1] and fg_hist[2][1:3] == [TINY_LIMITS.max_objects, TINY_LIMITS.max_history]
    # Encode and decode take 1..max_streams videos per call.
    for stage, name in (("encoder", "fg_invalid"), ("decoder", "f4")):
        shapes = record.engines[stage].profile[name]
        assert [s[0] for s in shapes] == [1, TINY_LIMITS.max_streams, TINY_LIMITS.max_streams], stage
    images = record.engines["backbone"].profile["images"]
    assert images[0] == [1, 3, TINY_LIMITS.min_size, TINY_LIMITS.min_size]
    assert images[2] == [TINY_LIMITS.max_batch, 3, TINY_LIMITS.max_size, TINY_LIMITS.max_size]
    # The record reads back from manifest.json as the runtime reads it.
    assert load_manifest(tmp_path).tensorrt == record


def test_fp16_graphs_parse_into_fp16_layers_and_fp32_graphs_into_fp32(tmp_path):
    """Strongly typed networks: the precision is the graph's, not a builder flag's."""
    flavour = load_flavour("rtx")

    def layer_types(precision: str) -> set[str]:
        path = tmp_path / f"backbone.{precision}.onnx"
        onnx.save_model(tiny_stage_graph("backbone", precision), path)
        logger = trt.Logger(trt.Logger.ERROR)
        network = trt.Builder(logger).create_network(
            1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        )
        assert trt.OnnxParser(network, logger).parse_from_file(str(path))
        kinds = set()
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.CONVOLUTION:
                kinds.add(layer.get_output(0).dtype.name)
        return kinds

    assert flavour.name == "rtx"
    assert layer_types("fp32") == {"FLOAT"}
    assert layer_types("fp16") == {"HALF"}


def test_a_graph_tensorrt_rejects_is_a_clear_error(tmp_path):
    model = tiny_stage_graph("encoder", "fp32")
    # An operator from a domain no parser knows.
    model.graph.node.append(
        onnx.helper.make_node("Mystery", ["fg_desc"], ["unused"], domain="example.invalid")
    )
    model.opset_import.append(onnx.helper.make_opsetid("example.invalid", 1))
    path = tmp_path / "encoder.onnx"
    onnx.save_model(model, path)
    profile = {k: [list(s) for s in v] for k, v in _tiny_profile("encoder").items()}
    with pytest.raises(HodorError, match=r"cannot parse encoder\.onnx"):
        build_engine(load_flavour("rtx"), path, profile, ("sm_86",))


def test_explicit_targets_are_recorded_and_an_unknown_one_is_refused(tmp_path):
    manifest = write_tiny_export(tmp_path)
    record = build_engines(tmp_path, manifest, "rtx", "on", targets=["sm_86"], progress=Progress())
    assert record.targets == ("sm_86",)
    profile = record.engines["encoder"].profile
    with pytest.raises(HodorError, match="cannot target sm_90"):
        build_engine(load_flavour("rtx"), tmp_path / "encoder.onnx", profile, ("sm_90",))


def _tiny_profile(stage: str):
    from hodor.export.onnx_export import profile_for, stage_signature

    ins, _ = stage_signature(stage, 9)
    return profile_for(ins, TINY_LIMITS)


# --------------------------------------------------------------------------- the engine cache


def test_a_second_export_reuses_every_engine(tmp_path):
    _, record, _ = export_and_build(tmp_path / "x")
    inodes = {s: (tmp_path / "x" / record.engines[s].file).stat().st_ino for s in STAGES}

    _, again, progress = reexport(tmp_path / "x")

    assert again == record
    for stage in STAGES:
        assert "reusing" in progress.about(stage) and "building" not in progress.about(stage)
        assert (tmp_path / "x" / record.engines[stage].file).stat().st_ino == inodes[stage]


def test_rebuilding_in_place_reuses_too(tmp_path):
    manifest, record, _ = export_and_build(tmp_path)
    progress = Progress()
    assert build_engines(tmp_path, manifest, "rtx", "on", progress=progress) == record
    assert all("reusing" in progress.about(s) for s in STAGES)


def test_a_changed_graph_rebuilds_that_engine_only(tmp_path):
    _, record, _ = export_and_build(tmp_path / "x")
    old_encoder = (tmp_path / "x" / "encoder.fp32.engine").read_bytes()

    _, again, progress = reexport(tmp_path / "x", seeds={"encoder": 1})  # new encoder weights only

    assert "reusing" in progress.about("backbone") and "reusing" in progress.about("decoder")
    assert "building" in progress.about("encoder") and "the ONNX graph changed" in progress.about("encoder")
    assert again.engines["encoder"].onnx_sha256 != record.engines["encoder"].onnx_sha256
    assert again.engines["encoder"].engine_sha256 != record.engines["encoder"].engine_sha256
    assert again.engines["backbone"] == record.engines["backbone"]
    assert (tmp_path / "x" / "encoder.fp32.engine").read_bytes() != old_encoder


def test_a_changed_precision_rebuilds(tmp_path):
    export_and_build(tmp_path / "x", "fp32")

    _, record, progress = reexport(tmp_path / "x", "fp16")

    assert record.precision == "fp16"
    for stage in STAGES:
        assert "built for fp32 before" in progress.about(stage)
        assert record.engines[stage].file == f"{stage}.fp16.engine"
        assert record.engines[stage].onnx == f"{stage}.fp16.onnx"


def test_changed_limits_rebuild_the_engines_whose_profile_changed(tmp_path):
    export_and_build(tmp_path / "x")

    _, record, progress = reexport(tmp_path / "x", limits=replace(TINY_LIMITS, max_objects=6))

    assert "optimisation profile" in progress.about("encoder") and "optimisation profile" in progress.about(
        "decoder"
    )
    assert "reusing" in progress.about("backbone")  # its profile does not involve objects
    assert record.engines["encoder"].profile["fg_masks"][2][1] == 6


def test_other_targets_or_a_damaged_engine_rebuild(tmp_path):
    _, record, _ = export_and_build(tmp_path / "x")

    _, _, progress = reexport(tmp_path / "x", targets=["sm_89"])
    assert all("built for sm_80" in progress.about(s) for s in STAGES)
    _, restored, _ = reexport(tmp_path / "x")  # back to the default targets

    decoder = tmp_path / "x" / record.engines["decoder"].file
    decoder.write_bytes(decoder.read_bytes()[:-10])
    _, again, progress = reexport(tmp_path / "x")
    assert "changed or damaged" in progress.about("decoder")
    assert "reusing" in progress.about("encoder")
    assert again.engines["decoder"].engine_sha256 == sha256_file(tmp_path / "x" / "decoder.fp32.engine")
    assert again.engines["encoder"] == restored.engines["encoder"]


def test_engines_are_copied_from_a_previous_directory_that_was_not_linked_in(tmp_path):
    old = tmp_path / "old"
    _, record, _ = export_and_build(old)
    before = {p.name: sha256_file(p) for p in old.iterdir()}
    new = tmp_path / "new"
    manifest = write_tiny_export(new)

    progress = Progress()
    again = build_engines(new, manifest, "rtx", "on", previous_dir=old, progress=progress)

    assert again == record
    assert all("reusing" in progress.about(s) for s in STAGES)
    for entry in record.engines.values():
        assert sha256_file(new / entry.file) == entry.engine_sha256
    assert {p.name: sha256_file(p) for p in old.iterdir()} == before


def test_a_previous_record_naming_files_outside_its_directory_is_not_followed(tmp_path):
    """A doctored earlier manifest cannot make the build copy a file from elsewhere into the export."""
    old = tmp_path / "old"
    export_and_build(old)
    outside = tmp_path / "outside.engine"
    shutil.copy(old / "decoder.fp32.engine", outside)  # its sha256 matches the record's
    manifest_path = old / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["tensorrt"]["engines"]["decoder"]["file"] = "../outside.engine"
    manifest_path.write_text(json.dumps(data))
    new = tmp_path / "new"
    manifest = write_tiny_export(new)

    progress = Progress()
    build_engines(new, manifest, "rtx", "on", previous_dir=old, progress=progress)

    assert all("no engine built before" in progress.about(s) for s in STAGES)


# --------------------------------------------------------------------------- validity without a GPU


def test_engine_header_validity_without_a_gpu(tmp_path):
    """TensorRT for RTX's header check tells a malformed file apart with no GPU present."""
    _, record, _ = export_and_build(tmp_path)
    flavour = load_flavour("rtx")
    engine = tmp_path / record.engines["backbone"].file

    runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    header = engine.read_bytes()[: runtime.engine_header_size]
    _, diagnostics = runtime.get_engine_validity(header)
    assert "MALFORMED_ENGINE" not in header_diagnostics(flavour, diagnostics)
    assert check_engine_header(flavour, engine, record, gpu=None).ok

    damaged = tmp_path / "damaged.engine"
    damaged.write_bytes(b"\0" * 4096)
    _, diagnostics = runtime.get_engine_validity(damaged.read_bytes()[: runtime.engine_header_size])
    assert "MALFORMED_ENGINE" in header_diagnostics(flavour, diagnostics)
    verdict = check_engine_header(flavour, damaged, record, gpu=None)
    assert not verdict.ok and "damaged" in verdict.problem

    missing = check_engine_header(flavour, tmp_path / "absent.engine", record, gpu=None)
    assert not missing.ok and "missing" in missing.problem


def test_probe_says_why_engines_cannot_run_here(tmp_path):
    manifest, record, _ = export_and_build(tmp_path)
    assert probe_engines(tmp_path, with_tensorrt(manifest, None)).startswith(
        "the export has no TensorRT engines"
    )
    if not _cuda():
        assert probe_engines(tmp_path, with_tensorrt(manifest, record)) == "no CUDA GPU is available"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------- no flavour installed


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make both flavours fail to import, as on a machine where neither is installed."""
    for module in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError


def test_tensorrt_on_without_a_flavour_is_a_one_line_error_saying_how_to_install(tmp_path, no_tensorrt):
    manifest = write_tiny_export(tmp_path)
    with pytest.raises(HodorError) as err:
        build_engines(tmp_path, manifest, None, "on", progress=Progress())
    message = str(err.value)
    assert "\n" not in message
    assert (
        "pip install 'hodor-engine[tensorrt]'" in message
        and "pip install 'hodor-engine[tensorrt-rtx]'" in message
    )
    with pytest.raises(HodorError, match="TensorRT for RTX .* is not installed"):
        resolve_flavour("rtx", "on")
    assert not list(tmp_path.glob("*.engine"))


def test_tensorrt_auto_without_a_flavour_skips_engines_and_off_builds_none(tmp_path, no_tensorrt):
    manifest = write_tiny_export(tmp_path)
    progress = Progress()
    assert build_engines(tmp_path, manifest, None, "auto", progress=progress) is None
    assert "engines skipped" in " ".join(progress)
    assert build_engines(tmp_path, manifest, None, "off", progress=progress) is None
    assert not list(tmp_path.glob("*.engine"))


def test_tensorrt_auto_picks_rtx_without_a_gpu(tmp_path):
    if _cuda():
        pytest.skip("a GPU is present: auto prefers TensorRT where it is installed")
    assert resolve_flavour(None, "auto").name == "rtx"
    assert resolve_flavour(None, "off") is None
    with pytest.raises(HodorError, match="unknown --tensorrt mode"):
        resolve_flavour(None, "yes")


def test_cli_tensorrt_on_without_a_flavour_exits_2_with_one_line(
    tmp_path, parity_checkpoint, no_tensorrt, capsys
):
    cli = pytest.importorskip("hodor.export.cli", reason="hodor-export's CLI is not written yet")
    out = tmp_path / "out"
    try:
        code = cli.main([str(parity_checkpoint), "--tensorrt", "on", "--out", str(out)])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install" in err[0] and "tensorrt-rtx" in err[0]
    assert not out.exists()


# ----------------------------------------------------------- the real graphs, through hodor-export


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


@pytest.mark.slow
def test_hodor_export_builds_and_then_reuses_the_parity_engines(
    tmp_path, parity_checkpoint, exported, capsys, monkeypatch
):
    """hodor-export --tensorrt on with TensorRT for RTX on this (GPU-less) machine: the three
    real fp16 stage graphs build into engines with the manifest's profiles; the export's engine
    hook, called again on the unchanged export, reuses them. (Each stage's fp32 and fp16 graph
    is also built on its own in test_trt_parse.py.)

    The command runs whole except its torch -> ONNX tracing, which hands over the suite's shared
    export of the same checkpoint with the same options instead (that step is what the
    export tests check; here it would only repeat a minute or more of this suite): the fp16
    conversion, the self-checks against torch, the staging, the manifest and the engines are
    this command's own."""
    from hodor.export import cli, onnx_export

    traced: list[str] = []

    def shared_graph(net, stage, cfg, limits, opset):
        traced.append(stage)
        return onnx.load(str(exported.directory / graph_filename(stage, "fp32")))

    monkeypatch.setattr(onnx_export, "export_stage", shared_graph)
    out = tmp_path / "parity.hodor"
    args = [str(parity_checkpoint), "--out", str(out), "--precision", "fp16", "--tensorrt", "on",
            "--trt-flavour", "rtx"]  # fmt: skip
    assert cli.main(args) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    assert traced == list(STAGES)
    manifest = load_manifest(out)
    for stage in STAGES:  # the graphs are the shared export's: same checkpoint, same options
        shared = exported.directory / graph_filename(stage, "fp32")
        assert manifest.graph(stage, "fp32").sha256 == sha256_file(shared)
    record = manifest.tensorrt
    assert record is not None
    assert (record.flavour, record.precision, record.version) == ("rtx", "fp16", trt.__version__)
    for stage in STAGES:
        entry = record.engines[stage]
        assert (
            entry.onnx == f"{stage}.fp16.onnx" and entry.onnx_sha256 == manifest.graph(stage, "fp16").sha256
        )
        assert check_engine_header(load_flavour("rtx"), out / entry.file, record, gpu=None).ok
        assert f"tensorrt: {stage}: built" in first
    print(f"\n  {first.strip().splitlines()[-1]}")

    said: list[str] = []
    again = build_engines(out, manifest, "rtx", "on", progress=said.append)
    assert again == record
    for stage in STAGES:
        assert any(line.startswith(f"tensorrt: {stage}: reusing") for line in said), said
