"""The ONNX Runtime backend over an export directory: the seam, its limits, and a damaged export."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hodor.engine.backends.base import Backend, ConfigOverrides
from hodor.engine.backends.manifest import MANIFEST_NAME, STAGES, load_manifest
from hodor.engine.backends.onnxruntime_backend import (
    OnnxRuntimeBackend,
    open_onnxruntime_backend,
    usable_cores,
)
from hodor.errors import HodorError
from tests.parity_fixture import CASE_A
from tests.test_export_shared import ExportRun, shared_export


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


@pytest.fixture(scope="session")
def backend(exported) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(exported.directory)


def _sessions_from(monkeypatch) -> list:
    """Records what each ``InferenceSession`` is created from: a path (str) or graph bytes."""
    import onnxruntime as ort

    created: list = []
    real = ort.InferenceSession
    monkeypatch.setattr(
        ort, "InferenceSession", lambda src, *a, **k: created.append(src) or real(src, *a, **k)
    )
    return created


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy of an export directory whose graphs are hard links (cheap) and whose manifest is a copy;
    the runtimes' cache directories are left out."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name == MANIFEST_NAME:
            (dst / p.name).write_text(p.read_text())
        elif p.is_file():
            os.link(p, dst / p.name)
    return dst


def _hodor_run(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    video = CASE_A / "video"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hodor.engine.cli",
            str(video / "JPEGImages" / "synth"),
            "--masks",
            str(video / "Annotations" / "synth" / "00000.png"),
            "--model",
            str(model),
            "--out",
            str(out),
            "--no-overlay",
            *extra,
        ],
        capture_output=True,
        text=True,
    )


def test_backend_implements_the_seam(backend, exported):
    assert isinstance(backend, Backend)
    assert backend.name == "onnxruntime" and backend.device == torch.device("cpu")
    assert backend.precision == "fp32"  # the CPU runs the fp32 graphs by default
    assert backend.config == load_manifest(exported.directory, verify=False).hodor_config
    assert backend.threads == usable_cores()
    assert set(backend.sessions) == set(STAGES)
    for session in backend.sessions.values():
        assert session.get_providers() == ["CPUExecutionProvider"]
        assert session.get_session_options().intra_op_num_threads == usable_cores()
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == (
            "1" if backend.spinning else "0"
        )
    assert backend.startup_s > 0

    f4, f8 = backend.backbone(torch.zeros(1, 3, 64, 96))
    assert f4.shape == (1, 256, 16, 24) and f8.shape == (1, 256, 8, 12) and f4.dtype == torch.float32
    fg, bg = backend.encode(f8, torch.ones(1, 2, 8, 12), torch.rand(1, 9, 8, 12))
    assert fg.shape == (1, 2, 256) and bg.shape == (1, 9, 256)
    fg_hist, bg_hist = fg[:, :, None], bg[:, :, None]
    valid = torch.zeros(1, 2, 1, dtype=torch.bool), torch.zeros(1, 9, 1, dtype=torch.bool)
    logits = backend.decode(f4, f8, fg_hist, bg_hist, *valid)
    assert logits.shape == (1, 12, 16, 24) and torch.isfinite(logits).all()


def test_sessions_are_created_once(exported, monkeypatch):
    import onnxruntime as ort

    created = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(1) or real(*a, **k))
    b = OnnxRuntimeBackend(exported.directory)
    assert len(created) == 3
    f4, f8 = b.backbone(torch.zeros(2, 3, 64, 64))
    b.encode(f8[:1], torch.ones(1, 1, 8, 8), torch.ones(1, 9, 8, 8))
    b.backbone(torch.zeros(1, 3, 96, 64))
    assert len(created) == 3


@pytest.mark.parametrize(
    "call,needles",
    [
        ((33, 1, 256, 448), ["33 objects", "limit of 32", "--max-objects 33"]),
        ((2, 18, 256, 448), ["window of 17", "--max-window 17"]),
        ((2, 8, 256, 1056), ["1056", "--max-size 1056"]),
        ((2, 8, 32, 448), ["--min-size 32"]),
        ((2, 8, 256, 448, 17), ["17 videos", "limit of 16", "--max-streams 17"]),
    ],
)
def test_limits_name_the_limit_and_the_reexport(backend, call, needles):
    with pytest.raises(HodorError) as info:
        backend.check_limits(*call)
    for needle in needles:
        assert needle in str(info.value)


def test_limits_allow_the_whole_range(backend):
    backend.check_limits(32, 17, 1024, 1024, 16)
    backend.check_limits(1, 1, 64, 64)


def test_overrides_reach_the_backend_config(exported):
    b = open_onnxruntime_backend(exported.directory, None, ConfigOverrides(min_dim=256))
    assert (b.config.input.min_dim, b.config.input.max_dim) == (256, 494)


def test_cuda_without_the_gpu_build(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(HodorError, match="onnxruntime-gpu"):
        OnnxRuntimeBackend(exported.directory, device="cuda")


def test_missing_precision_says_how_to_export_it(tmp_path, exported):
    d = _linked_copy(exported.directory, tmp_path / "x.hodor")
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    del manifest["graphs"]["fp16"]
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(HodorError, match="--precision fp16"):
        OnnxRuntimeBackend(d, precision="fp16")


def test_export_from_another_version(tmp_path, exported):
    d = _linked_copy(exported.directory, tmp_path / "old.hodor")
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    manifest["hodor_version"] = "0.0.1"
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(HodorError, match="exported by hodor-engine 0.0.1.*re-export"):
        OnnxRuntimeBackend(d)
    proc = _hodor_run(d, tmp_path / "out", "--backend", "onnxruntime")
    assert proc.returncode == 2
    assert (
        len(proc.stderr.strip().splitlines()) == 1
        and "0.0.1" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_graph_that_no_longer_matches_its_sha256(tmp_path, exported):
    d = _linked_copy(exported.directory, tmp_path / "bad.hodor")
    graph = d / "encoder.onnx"
    data = graph.read_bytes()
    graph.unlink()  # break the hard link before changing a byte
    graph.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(HodorError, match="encoder.onnx does not match its sha256"):
        OnnxRuntimeBackend(d)
    with pytest.raises(HodorError, match="sha256"):
        load_manifest(d)
    proc = _hodor_run(d, tmp_path / "out", "--backend", "onnxruntime")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "sha256" in proc.stderr


def test_not_an_export_directory(tmp_path):
    with pytest.raises(HodorError, match="not a hodor export directory"):
        OnnxRuntimeBackend(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(HodorError, match="not valid JSON"):
        OnnxRuntimeBackend(tmp_path)


# --------------------------------------------------------------------------- optimised-graph cache


def test_optimised_graphs_are_cached_and_reused(exported, tmp_path, monkeypatch):
    import onnxruntime as ort

    created = _sessions_from(monkeypatch)
    first = OnnxRuntimeBackend(exported.directory, cache_dir=tmp_path / "c")
    assert all(isinstance(src, bytes) for src in created)  # optimised from the checked graph bytes
    cached = sorted((tmp_path / "c").iterdir())
    assert [p.name.split(".")[0] for p in cached] == sorted(STAGES) and all(
        p.suffix == ".onnx" for p in cached
    )
    created.clear()
    second = OnnxRuntimeBackend(exported.directory, cache_dir=tmp_path / "c")
    assert sorted(created) == sorted(str(p) for p in cached)  # loaded, not optimised again
    for session in second.sessions.values():
        level = session.get_session_options().graph_optimization_level
        assert level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # The cached graphs compute exactly what the freshly optimised ones do.
    g = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, 64, 96, generator=g)
    for a, b in zip(first.backbone(images), second.backbone(images), strict=True):
        assert torch.equal(a, b)
    f8 = first.backbone(images)[1]
    fg, bg = torch.rand(1, 2, 8, 12, generator=g), torch.rand(1, 9, 8, 12, generator=g)
    for a, b in zip(first.encode(f8, fg, bg), second.encode(f8, fg, bg), strict=True):
        assert torch.equal(a, b)


def test_cache_key_follows_the_graph_and_the_runtime(exported, tmp_path, monkeypatch):
    import onnxruntime as ort

    OnnxRuntimeBackend(exported.directory, cache_dir=tmp_path / "c")
    before = {p.name for p in (tmp_path / "c").iterdir()}
    monkeypatch.setattr(ort, "__version__", ort.__version__ + "-other")
    OnnxRuntimeBackend(exported.directory, cache_dir=tmp_path / "c")
    after = {p.name for p in (tmp_path / "c").iterdir()}
    assert before < after and len(after) == 2 * len(STAGES)


def test_cache_entries_unused_for_a_while_are_removed(exported, tmp_path):
    """Graphs of another runtime version or CPU (here: a stray name) unused for CACHE_IDLE_DAYS go
    when the export is opened; the graphs a start loads are marked used and stay however old."""
    from hodor.engine.backends.export_files import CACHE_IDLE_DAYS

    cache = tmp_path / "c"
    OnnxRuntimeBackend(exported.directory, cache_dir=cache)
    ours = sorted(cache.iterdir())
    old = time.time() - (CACHE_IDLE_DAYS + 1) * 86400
    stale, recent = cache / "decoder.0123456789abcdef.onnx", cache / "decoder.fedcba9876543210.onnx"
    unfinished = cache / ".encoder.0123456789abcdef.onnx.12.34.5.tmp"  # a killed writer's
    foreign = cache / "notes.txt"  # not the cache's: a directory named as the cache may hold others
    for path in (stale, recent, unfinished, foreign):
        path.write_bytes(b"x")
    for path in (*ours, stale, unfinished, foreign):
        os.utime(path, (old, old))
    os.utime(recent, (old + 2 * 86400, old + 2 * 86400))  # CACHE_IDLE_DAYS - 1 days ago
    OnnxRuntimeBackend(exported.directory, cache_dir=cache)
    assert sorted(cache.iterdir()) == sorted([*ours, recent, foreign])
    assert all(p.stat().st_mtime > time.time() - 3600 for p in ours)  # marked used by this start


def test_damaged_cache_entry_is_rebuilt(exported, tmp_path, caplog):
    OnnxRuntimeBackend(exported.directory, cache_dir=tmp_path / "c")
    victim = next(p for p in (tmp_path / "c").iterdir() if p.name.startswith("encoder."))
    victim.write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING):
        b = OnnxRuntimeBackend(exported.directory, cache_dir=tmp_path / "c")
    assert "damaged cached graph" in caplog.text
    assert victim.stat().st_size > 1000  # written again
    fg, _ = b.encode(torch.zeros(1, 256, 8, 8), torch.ones(1, 1, 8, 8), torch.ones(1, 9, 8, 8))
    assert fg.shape == (1, 1, 256)


def test_default_cache_inside_the_export_and_none_when_unwritable(exported, tmp_path, caplog):
    d = _linked_copy(exported.directory, tmp_path / "m.hodor")
    assert OnnxRuntimeBackend(d).cache_dir == d / "ort-cache"
    assert len(list((d / "ort-cache").iterdir())) == len(STAGES)
    assert OnnxRuntimeBackend(d, cache=False).cache_dir is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        b = OnnxRuntimeBackend(d, cache_dir=blocker / "cache")
    assert b.cache_dir is None and "no cache" in caplog.text


def test_spinning_can_be_turned_off(exported):
    b = OnnxRuntimeBackend(exported.directory, spinning=False, cache=False)
    for session in b.sessions.values():
        assert (
            session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        )
