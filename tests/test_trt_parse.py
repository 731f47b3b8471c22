"""TensorRT itself accepts every exported graph: TensorRT for RTX parses each one with its own
ONNX parser and builds an engine per stage and precision with the manifest's optimisation
profile, ahead of time, on this machine (no GPU needed). A graph TensorRT rejects fails here.

The build goes through the exporter's own adapter (``hodor.export.tensorrt_build``), which
attaches no timing cache (on a CPU-only machine that would make the builder query a GPU).
"""

from __future__ import annotations

import pytest

from hodor.engine.backends.manifest import STAGES, load_manifest
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT for RTX (pip install hodor-engine[tensorrt-rtx]) is not installed"
)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("stage", STAGES)
def test_tensorrt_parses_and_builds_the_graph(exported, stage, precision):
    from hodor.export.tensorrt_build import build_engine, default_targets, resolve_flavour

    flavour = resolve_flavour("rtx", "on")
    manifest = load_manifest(exported.directory, verify=False)
    graph = manifest.graph(stage, precision)
    result = build_engine(flavour, exported.directory / graph.file, graph.profile, default_targets(flavour))
    assert len(result.plan) > 1_000_000  # weights included: a real engine, not an empty shell
