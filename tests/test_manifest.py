"""The export manifest: its JSON round trip, the typed TensorRT section, and the files it may name."""

from __future__ import annotations

import json
import shutil

import pytest

from hodor.engine.backends.manifest import (
    MANIFEST_NAME,
    EngineEntry,
    TensorRTRecord,
    load_manifest,
    read_graph,
    sha256_file,
    verify_graph,
    write_manifest,
)
from hodor.errors import HodorError
from tests.test_tensorrt_tiny_export import with_tensorrt, write_tiny_export

RECORD = TensorRTRecord(
    flavour="rtx",
    version="1.7",
    precision="fp32",
    targets=("sm_86", "sm_89"),
    gpu=None,
    engines={
        "encoder": EngineEntry(
            file="encoder.fp32.engine",
            onnx="encoder.onnx",
            onnx_sha256="ab" * 32,
            engine_sha256="cd" * 32,
            profile={"f8": [[1, 256, 8, 8], [1, 256, 16, 16], [1, 256, 32, 32]]},
            build_seconds=1.234,
        )
    },
)


def _edit(directory, change) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_tensorrt_section_is_typed_through_the_json(tmp_path):
    write_manifest(tmp_path, with_tensorrt(write_tiny_export(tmp_path), RECORD))
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["tensorrt"]["record_version"] == 1 and raw["tensorrt"]["targets"] == ["sm_86", "sm_89"]
    loaded = load_manifest(tmp_path)
    assert isinstance(loaded.tensorrt, TensorRTRecord) and loaded.tensorrt == RECORD
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written whole


def test_another_tensorrt_section_version_is_refused(tmp_path):
    write_manifest(tmp_path, with_tensorrt(write_tiny_export(tmp_path), RECORD))
    _edit(tmp_path, lambda d: d["tensorrt"].update(record_version=99))
    with pytest.raises(HodorError, match="version 99"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("name", ["../elsewhere/encoder.onnx", "/tmp/encoder.onnx", "sub/encoder.onnx", ".."])
def test_a_graph_named_outside_the_export_directory_is_refused(tmp_path, name):
    export = tmp_path / "m.hodor"
    write_tiny_export(export)
    if name.startswith("../"):  # a matching graph is there: only the refusal keeps it from being read
        (tmp_path / "elsewhere").mkdir()
        shutil.copy(export / "encoder.onnx", tmp_path / "elsewhere" / "encoder.onnx")
    _edit(export, lambda d: d["graphs"]["fp32"]["encoder"].update(file=name))
    for verify in (True, False):
        with pytest.raises(HodorError) as err:
            load_manifest(export, verify=verify)
        message = str(err.value)
        assert "\n" not in message and repr(name) in message
        assert "not a file in the export directory" in message


def test_an_engine_named_outside_the_export_directory_is_refused(tmp_path):
    write_manifest(tmp_path, with_tensorrt(write_tiny_export(tmp_path), RECORD))
    _edit(tmp_path, lambda d: d["tensorrt"]["engines"]["encoder"].update(file="../encoder.fp32.engine"))
    with pytest.raises(HodorError, match="not a file in the export directory"):
        load_manifest(tmp_path)


def test_a_graph_is_checked_against_its_sha256_by_one_rule(tmp_path):
    manifest = write_tiny_export(tmp_path)
    entry = manifest.graph("decoder")
    assert verify_graph(tmp_path, entry) == tmp_path / "decoder.onnx"
    assert read_graph(tmp_path, entry) == (tmp_path / "decoder.onnx").read_bytes()
    assert sha256_file(tmp_path / "decoder.onnx") == entry.sha256
    data = (tmp_path / "decoder.onnx").read_bytes()
    (tmp_path / "decoder.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    for check in (verify_graph, read_graph):
        with pytest.raises(HodorError, match="decoder.onnx does not match its sha256"):
            check(tmp_path, entry)
    (tmp_path / "decoder.onnx").unlink()
    for check in (verify_graph, read_graph):
        with pytest.raises(HodorError, match="decoder.onnx is missing"):
            check(tmp_path, entry)
