"""``hodor-export`` as a command: option handling, one-line errors (exit 2), atomic writing.

The real export is exercised once for the whole suite (tests/test_export_shared.py); the
tests here that only concern the command around it replace the torch -> ONNX step with a
trivial graph so that they take milliseconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import hodor.export.cli as export_cli
import hodor.export.onnx_export as onnx_export
import hodor.model
from hodor.engine.backends.manifest import MANIFEST_NAME, TensorRTRecord, load_manifest
from tests.parity_fixture import CASE_A

CONFIG = CASE_A / "spec" / "config.yaml"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = export_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hodor-export: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def fake_checkpoint(tmp_path) -> Path:
    """A checkpoint file with its config.yaml beside it (contents never read: loading is faked)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(CONFIG, d / "config.yaml")
    (d / "model.pth").write_bytes(b"weights")
    return d / "model.pth"


@pytest.fixture
def fast_export(monkeypatch):
    """Replace the network and the torch -> ONNX step with trivial stand-ins; return the call log."""
    calls: list[str] = []

    def export_stage(net, stage, cfg, limits, opset):
        calls.append(stage)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], stage, [x], [y])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    monkeypatch.setattr(hodor.model, "load_hodor", lambda *a, **k: torch.nn.Identity())
    monkeypatch.setattr(onnx_export, "export_stage", export_stage)
    monkeypatch.setattr(onnx_export, "verify_against_torch", lambda *a, **k: None)
    return calls


# --------------------------------------------------------------------------- errors


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = _run([str(tmp_path / "nope.pth")], capsys)
    _one_line_error(code, err, "checkpoint not found", "nope.pth")


def test_missing_config(tmp_path, capsys, parity_checkpoint):
    lonely = tmp_path / "model.pth"
    os.link(parity_checkpoint, lonely)
    code, _, err = _run([str(lonely), "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "config file not found", "--config")
    code, _, err = _run([str(lonely), "--config", str(tmp_path / "missing.yaml")], capsys)
    _one_line_error(code, err, "missing.yaml")
    assert not (tmp_path / "o").exists()


def test_config_contradicting_the_checkpoint(tmp_path, capsys, parity_checkpoint):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(CONFIG.read_text().replace("ENCODER_LAYERS: 5", "ENCODER_LAYERS: 6"))
    code, _, err = _run(
        [str(parity_checkpoint), "--config", str(wrong), "--out", str(tmp_path / "o")], capsys
    )
    _one_line_error(code, err, "config")
    assert not (tmp_path / "o").exists() and os.listdir(tmp_path) == ["wrong.yaml"]


def test_file_that_is_not_a_checkpoint(fake_checkpoint, capsys):
    code, _, err = _run([str(fake_checkpoint), "--out", str(fake_checkpoint.parent / "o")], capsys)
    _one_line_error(code, err, "not a PyTorch checkpoint")


@pytest.mark.parametrize(
    "option,needle",
    [
        (["--max-objects", "0"], "--max-objects"),
        (["--max-window", "-1"], "--max-window"),
        (["--max-batch", "0"], "--max-batch"),
        (["--max-streams", "0"], "--max-streams"),
        (["--min-size", "100"], "multiple of 32"),
        (["--max-size", "64", "--min-size", "128"], "larger than --max-size"),
        (["--opset", "11"], "--opset"),
    ],
)
def test_bad_limits(fake_checkpoint, capsys, option, needle):
    code, _, err = _run([str(fake_checkpoint), *option], capsys)
    _one_line_error(code, err, needle)


def test_out_that_is_not_an_export_directory_is_not_replaced(fake_checkpoint, tmp_path, capsys, fast_export):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    code, _, err = _run([str(fake_checkpoint), "--out", str(precious)], capsys)
    _one_line_error(code, err, "not a hodor export")
    assert (precious / "thesis.tex").read_text() == "do not delete" and not fast_export


def test_missing_export_packages_are_named(fake_checkpoint, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    code, _, err = _run([str(fake_checkpoint), "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "needs onnx", "pip install 'hodor-engine[export]'")
    assert not (tmp_path / "o").exists()


def test_tensorrt_on_without_tensorrt(fake_checkpoint, tmp_path, capsys, monkeypatch, fast_export):
    monkeypatch.setattr(export_cli, "_tensorrt_module", lambda: None)
    code, _, err = _run([str(fake_checkpoint), "--out", str(tmp_path / "o"), "--tensorrt"], capsys)
    _one_line_error(code, err, export_cli.TENSORRT_MISSING)
    assert not fast_export, "fails before exporting anything"
    code, _, err = _run([str(fake_checkpoint), "--out", str(tmp_path / "o")], capsys)  # auto: skips
    assert code == 0, err


def test_tensorrt_option_defaults():
    parse = export_cli.build_parser().parse_args
    assert parse(["m.pth"]).tensorrt == "auto"
    assert parse(["m.pth", "--tensorrt"]).tensorrt == "on"
    assert parse(["m.pth", "--tensorrt", "off"]).tensorrt == "off"
    args = parse(["m.pth"])
    assert (args.precision, args.max_objects, args.max_window, args.opset) == ("fp32", 32, 16, 20)
    assert args.max_streams == 16


def test_the_console_entry_point_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hodor.export.cli", str(tmp_path / "missing.pth")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hodor-export: error: checkpoint not found: {tmp_path / 'missing.pth'}"
    ]


# --------------------------------------------------------------------------- directory handling


def test_default_out_is_the_checkpoint_stem_in_the_working_directory(
    fake_checkpoint, tmp_path, capsys, monkeypatch, fast_export
):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run([str(fake_checkpoint), "--tensorrt", "off"], capsys)
    assert code == 0, err
    assert (tmp_path / "model.hodor" / MANIFEST_NAME).is_file()
    assert fast_export == ["backbone", "encoder", "decoder"]
    assert out.strip().splitlines()[-1].startswith("hodor-export: fp32 graphs (backbone ")


def test_rerunning_updates_the_export(fake_checkpoint, tmp_path, capsys, fast_export):
    out = tmp_path / "m.hodor"
    assert _run([str(fake_checkpoint), "--out", str(out), "--tensorrt", "off"], capsys)[0] == 0
    assert load_manifest(out).limits.max_objects == 32
    assert (
        _run([str(fake_checkpoint), "--out", str(out), "--max-objects", "64", "--tensorrt", "off"], capsys)[0]
        == 0
    )
    assert load_manifest(out).limits.max_objects == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.hodor"]


class _Interrupt:
    """``export_stage`` that is interrupted (Ctrl-C) when it reaches ``stage``."""

    def __init__(self, inner, stage: str):
        self.inner, self.stage = inner, stage

    def __call__(self, net, stage, *rest):
        if stage == self.stage:
            raise KeyboardInterrupt
        return self.inner(net, stage, *rest)


@pytest.mark.parametrize("stage", ["backbone", "decoder"])
def test_interrupted_export_leaves_nothing_that_looks_complete(
    fake_checkpoint, tmp_path, capsys, monkeypatch, fast_export, stage
):
    out = tmp_path / "m.hodor"
    monkeypatch.setattr(onnx_export, "export_stage", _Interrupt(onnx_export.export_stage, stage))
    code, _, err = _run([str(fake_checkpoint), "--out", str(out), "--tensorrt", "off"], capsys)
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no out, no partial directory


def test_interrupted_reexport_keeps_the_previous_export(
    fake_checkpoint, tmp_path, capsys, monkeypatch, fast_export
):
    out = tmp_path / "m.hodor"
    assert _run([str(fake_checkpoint), "--out", str(out), "--tensorrt", "off"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(onnx_export, "export_stage", _Interrupt(onnx_export.export_stage, "decoder"))
    argv = [str(fake_checkpoint), "--out", str(out), "--max-objects", "8", "--tensorrt", "off"]
    assert _run(argv, capsys)[0] == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_manifest(out).limits.max_objects == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.hodor"]


def test_a_failing_export_removes_its_partial_directory(
    fake_checkpoint, tmp_path, capsys, monkeypatch, fast_export
):
    def broken(*args):
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(onnx_export, "export_stage", broken)
    with pytest.raises(RuntimeError, match="exporter bug"):
        export_cli.main([str(fake_checkpoint), "--out", str(tmp_path / "m.hodor"), "--tensorrt", "off"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_fake_graphs_are_real_onnx(fake_checkpoint, tmp_path, capsys, fast_export):
    """Guards the stand-in used above: what it writes is a loadable model the manifest vouches for."""
    out = tmp_path / "m.hodor"
    assert _run([str(fake_checkpoint), "--out", str(out), "--tensorrt", "off"], capsys)[0] == 0
    m = load_manifest(out)
    onnx.checker.check_model(str(out / m.graph("backbone").file))


def test_leftovers_of_killed_exports_are_removed(fake_checkpoint, tmp_path, capsys, fast_export):
    # A staging directory whose lock nobody holds: an export killed outright (no clean-up ran).
    dead = tmp_path / ".m.hodor.staging-999999999-0badc0de"
    dead.mkdir()
    (dead / "backbone.onnx").write_bytes(b"half written")
    assert (
        _run([str(fake_checkpoint), "--out", str(tmp_path / "m.hodor"), "--tensorrt", "off"], capsys)[0] == 0
    )
    assert not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.hodor"]
    # (A staging directory still locked by a live process is kept: tests/test_io_staging.py.)


def _export(fake_checkpoint, out: Path, capsys, *options: str) -> None:
    code, _, err = _run([str(fake_checkpoint), "--out", str(out), "--tensorrt", "off", *options], capsys)
    assert code == 0, err


def test_reexporting_keeps_what_it_did_not_write(fake_checkpoint, tmp_path, capsys, fast_export):
    out = tmp_path / "m.hodor"
    _export(fake_checkpoint, out, capsys, "--precision", "fp16")
    (out / "ort-trt-cache").mkdir()
    (out / "ort-trt-cache" / "TensorrtExecutionProvider_0.engine").write_bytes(b"engine built by hodor-run")
    (out / "runtime-cache.8.9.bin").write_bytes(b"kernels")
    for cache in ("ort-cache", "openvino-cache"):  # optimised / rewritten graphs, compiled models
        (out / cache).mkdir()
        (out / cache / "decoder.0123456789abcdef.onnx").write_bytes(b"graph kept by hodor-run")
    (out / "notes.txt").write_text("mine")
    (out / "decoder.fp16.engine").write_bytes(b"an engine the exporter built")

    _export(fake_checkpoint, out, capsys, "--precision", "fp16")  # the same graphs again
    graphs = ["backbone.onnx", "encoder.onnx", "decoder.onnx"]
    fp16_graphs = [name.replace(".onnx", ".fp16.onnx") for name in graphs]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        graphs
        + fp16_graphs
        + [MANIFEST_NAME, "ort-trt-cache", "runtime-cache.8.9.bin", "notes.txt"]
        + ["ort-cache", "openvino-cache"]
    ), "graphs, engines and manifest replaced (no stale engine), the rest kept"
    cached = out / "ort-trt-cache" / "TensorrtExecutionProvider_0.engine"
    assert cached.read_bytes() == b"engine built by hodor-run"

    _export(fake_checkpoint, out, capsys)  # fp32 only: other graphs, whose caches would be stale
    assert sorted(p.name for p in out.iterdir()) == sorted(graphs + [MANIFEST_NAME, "notes.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.hodor"]


def test_a_second_export_into_the_same_directory_is_refused(fake_checkpoint, tmp_path, capsys, fast_export):
    from hodor.engine.io import OutputLock

    out = tmp_path / "m.hodor"
    _export(fake_checkpoint, out, capsys)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with OutputLock(out, holder="hodor-export"):
        code, _, err = _run([str(fake_checkpoint), "--out", str(out), "--tensorrt", "off"], capsys)
    _one_line_error(code, err, str(out), "being written by another run (hodor-export")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_argument_errors_are_one_line_and_version(capsys):
    import hodor

    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["m.pth", "--precision", "fp8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "hodor-export: error: argument --precision: invalid choice: 'fp8' (choose from fp32, fp16) "
        "(see hodor-export --help)"
    ] or (len(err.splitlines()) == 1 and "invalid choice: 'fp8'" in err), err
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--version"])
    assert (
        exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"hodor-export {hodor.__version__}"
    )


class _FakeTensorRT:
    """Stands in for ``hodor.export.tensorrt_build``: records how the exporter calls it."""

    class Flavour:
        name, label, version = "rtx", "TensorRT for RTX", "1.0"

    def __init__(self):
        self.calls = []

    def resolve_flavour(self, flavour, mode):
        self.calls.append(("resolve", flavour, mode))
        return self.Flavour()

    def build_engines(self, export_dir, manifest, flavour, mode, *, previous_dir=None, progress=None):
        # The graphs and a manifest are in place (in the partial directory) when engines are built.
        assert (export_dir / "backbone.onnx").is_file() and (export_dir / MANIFEST_NAME).is_file()
        assert not export_dir.name.endswith(".hodor")
        self.calls.append(("build", flavour, mode, previous_dir))
        progress("tensorrt: built")
        return self.record(flavour)

    @staticmethod
    def record(flavour):
        return TensorRTRecord(flavour=flavour, version="1.0", precision="fp32", targets=("sm_86",), gpu=None)


def test_tensorrt_engines_are_built_in_the_partial_directory_and_recorded(
    fake_checkpoint, tmp_path, capsys, monkeypatch, fast_export
):
    fake = _FakeTensorRT()
    monkeypatch.setattr(export_cli, "_tensorrt_module", lambda: fake)
    out = tmp_path / "m.hodor"
    code, stdout, err = _run([str(fake_checkpoint), "--out", str(out), "--trt-flavour", "rtx"], capsys)
    assert code == 0, err
    assert fake.calls == [("resolve", "rtx", "auto"), ("build", "rtx", "auto", None)]
    assert load_manifest(out).tensorrt == fake.record("rtx")
    assert "tensorrt: built" in stdout and "TensorRT engines: TensorRT for RTX 1.0" in stdout
    # Again into the same directory: the previous export is offered for engine reuse.
    assert _run([str(fake_checkpoint), "--out", str(out), "--tensorrt", "on"], capsys)[0] == 0
    assert fake.calls[-1] == ("build", "rtx", "on", out)


def test_tensorrt_off_never_touches_tensorrt(fake_checkpoint, tmp_path, capsys, monkeypatch, fast_export):
    monkeypatch.setattr(export_cli, "_tensorrt_module", lambda: pytest.fail("imported TensorRT"))
    code, stdout, _ = _run(
        [str(fake_checkpoint), "--out", str(tmp_path / "m.hodor"), "--tensorrt", "off"], capsys
    )
    assert code == 0 and load_manifest(tmp_path / "m.hodor").tensorrt is None
