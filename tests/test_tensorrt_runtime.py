"""Running TensorRT engines: the tensorrt backend on a GPU.

Everything marked ``cuda`` needs an NVIDIA GPU and an installed flavour whose engines run
on it; each skips with the reason otherwise. References: ONNX Runtime on the CPU for the
tiny stand-in graphs, the PyTorch network for the real ones, and the official pipeline's
masks (parity fixture case-a) through ``hodor-run --backend tensorrt``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hodor.accuracy import relative_error
from hodor.config import CHANNELS as C
from hodor.engine.backends.manifest import STAGES, TensorRTRecord, load_manifest
from hodor.engine.backends.tensorrt_backend import TensorRTBackend, installed_flavours, probe_engines
from hodor.errors import HodorError
from hodor.export.tensorrt_build import build_engines, resolve_flavour
from tests.test_tensorrt_tiny_export import (
    NUM_BG,
    TINY_LIMITS,
    with_tensorrt,
    write_manifest_json,
    write_tiny_export,
)

HAVE_GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(
    not HAVE_GPU, reason="no CUDA GPU here: TensorRT engines run only on an NVIDIA GPU"
)
# Relative error (max |diff| / max |reference|) per precision, as the ONNX graphs are judged.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def _flavour_or_skip():
    if not installed_flavours():
        pytest.skip("no TensorRT flavour is installed (pip install 'hodor-engine[tensorrt-rtx]')")
    return resolve_flavour(None, "on")


def _tiny_engines(directory: Path, precision: str, targets=None):
    """A tiny export with engines built by the flavour ``auto`` picks here; manifest with its record."""
    flavour = _flavour_or_skip()
    manifest = write_tiny_export(directory, precision)
    record = build_engines(directory, manifest, flavour.name, "on", targets=targets, progress=lambda _: None)
    write_manifest_json(directory, manifest, record)
    return with_tensorrt(manifest, record)


@pytest.fixture(params=["fp32", "fp16"])
def tiny(request, tmp_path):
    """(export dir, manifest, backend) for the tiny engines; skips (saying why) where they cannot run."""
    precision = request.param
    manifest = _tiny_engines(tmp_path, precision)
    why = probe_engines(tmp_path, manifest)
    if why is not None:
        pytest.skip(f"the {precision} engines built here cannot run on this GPU: {why}")
    backend = TensorRTBackend(tmp_path, manifest, "cuda")
    yield tmp_path, manifest, backend
    backend.close()


def _ort_stage(directory: Path, manifest, stage: str):
    """ONNX Runtime (CPU) on the same graph the engine was built from: a callable like the engine's."""
    ort = pytest.importorskip("onnxruntime")
    graph = manifest.graph(stage, manifest.precision)
    session = ort.InferenceSession(str(directory / graph.file), providers=["CPUExecutionProvider"])

    def run(**inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {k: v.detach().cpu().numpy() for k, v in inputs.items()}
        return [torch.from_numpy(o) for o in session.run(None, feeds)]

    return run


def _inputs(
    stage: str, height: int, width: int, objects: int, history: int, batch: int, seed: int, streams: int = 1
):
    """``batch`` frames for the backbone; ``streams`` videos for encode and decode (the last one's
    objects after its first are padding, marked invalid)."""
    g = torch.Generator().manual_seed(seed)
    h8, w8, h4, w4 = height // 8, width // 8, height // 4, width // 4
    s = streams
    if stage == "backbone":
        return {"images": torch.randn(batch, 3, height, width, generator=g)}
    if stage == "encoder":
        fg_pad = torch.zeros(s, objects, dtype=torch.bool)
        if s > 1:
            fg_pad[-1, 1:] = True
        return {
            "f8": torch.randn(s, C, h8, w8, generator=g),
            "fg_masks": torch.rand(s, objects, h8, w8, generator=g),
            "bg_masks": torch.rand(s, NUM_BG, h8, w8, generator=g),
            "fg_invalid": fg_pad,
        }
    fg_invalid = torch.rand(s, objects, history, generator=g) < 0.3
    fg_invalid[..., -1] = False
    if s > 1:
        fg_invalid[-1, 1:] = True
    bg_invalid = torch.zeros(s, NUM_BG, history, dtype=torch.bool)
    bg_invalid[..., -1] = True  # the current frame's background slot is never valid at decode
    return {
        "f4": torch.randn(s, C, h4, w4, generator=g),
        "f8": torch.randn(s, C, h8, w8, generator=g),
        "fg_hist": torch.randn(s, objects, history, C, generator=g),
        "bg_hist": torch.randn(s, NUM_BG, history, C, generator=g),
        "fg_invalid": fg_invalid,
        "bg_invalid": bg_invalid,
    }


def _seam_call(backend: TensorRTBackend, stage: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
    if stage == "backbone":
        return list(backend.backbone(cuda_inputs["images"]))
    if stage == "encoder":
        return list(backend.encode(**cuda_inputs))
    return [backend.decode(**cuda_inputs)]


# --------------------------------------------------------------------------- tiny engines


def test_the_backend_needs_a_gpu(tmp_path):
    """Without a GPU (or with --device cpu) the tensorrt backend refuses in one sentence."""
    manifest = write_tiny_export(tmp_path)
    record = TensorRTRecord(flavour="rtx", version="0", precision="fp32", targets=(), gpu=None)
    with pytest.raises(HodorError, match="needs an NVIDIA GPU"):
        TensorRTBackend(tmp_path, with_tensorrt(manifest, record), "cpu")


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("size", [(64, 96), (128, 192)])
@pytest.mark.parametrize("objects, history", [(1, 1), (3, TINY_LIMITS.max_history)])
@pytest.mark.parametrize("streams", [1, TINY_LIMITS.max_streams])
def test_each_stage_matches_onnxruntime(tiny, stage, size, objects, history, streams):
    directory, manifest, backend = tiny
    reference = _ort_stage(directory, manifest, stage)
    inputs = _inputs(stage, *size, objects, history, batch=2, seed=objects * 10 + history, streams=streams)
    got = _seam_call(backend, stage, inputs)
    want = reference(**inputs)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        err = relative_error(g.float().cpu(), w)
        assert err <= TOLERANCE[manifest.precision], f"{stage} {size} I={objects} T={history}: {err:.2e}"


@pytest.mark.cuda
@requires_gpu
def test_repeated_shapes_stay_correct_and_reuse_the_decoder_buffer(tiny):
    """Repeats at one shape (where CUDA graphs replay) and shape changes in between stay exact."""
    directory, manifest, backend = tiny
    reference = _ort_stage(directory, manifest, "decoder")
    first_ptr = None
    for call, (size, objects) in enumerate([((64, 96), 2)] * 4 + [((128, 96), 3)] + [((64, 96), 2)] * 2):
        inputs = _inputs("decoder", *size, objects, 2, batch=1, seed=100 + call)
        (logits,) = _seam_call(backend, "decoder", inputs)
        err = relative_error(logits.cpu(), reference(**inputs)[0])
        assert err <= TOLERANCE[manifest.precision], f"call {call}: {err:.2e}"
        if size == (64, 96):
            first_ptr = first_ptr or logits.data_ptr()
            assert logits.data_ptr() == first_ptr  # the decoder's output buffer is reused


@pytest.mark.cuda
@requires_gpu
def test_descriptors_and_features_are_fresh_tensors(tiny):
    """The ring keeps views of encoder outputs and the session a chunk's features: never overwritten."""
    _, _, backend = tiny
    a = _inputs("encoder", 64, 96, 2, 1, batch=1, seed=1)
    b = _inputs("encoder", 64, 96, 2, 1, batch=1, seed=2)
    fg_a, _ = _seam_call(backend, "encoder", a)
    kept = fg_a.clone()
    fg_b, _ = _seam_call(backend, "encoder", b)
    assert fg_a.data_ptr() != fg_b.data_ptr()
    torch.testing.assert_close(fg_a, kept, rtol=0, atol=0)


@pytest.mark.cuda
@requires_gpu
def test_a_batch_larger_than_the_profile_runs_in_pieces(tiny):
    directory, manifest, backend = tiny
    reference = _ort_stage(directory, manifest, "backbone")
    inputs = _inputs("backbone", 64, 64, 1, 1, batch=TINY_LIMITS.max_batch * 2 + 1, seed=5)
    f4, f8 = _seam_call(backend, "backbone", inputs)
    want4 = torch.cat(
        [reference(images=inputs["images"][i : i + 1])[0] for i in range(len(inputs["images"]))]
    )
    assert f4.shape[0] == inputs["images"].shape[0] == f8.shape[0]
    assert relative_error(f4.cpu(), want4) <= TOLERANCE[manifest.precision]


@pytest.mark.cuda
@requires_gpu
def test_runs_on_a_side_stream_as_on_the_default_stream(tiny):
    _, _, backend = tiny
    inputs = _inputs("decoder", 64, 96, 2, 2, batch=1, seed=9)
    on_default = _seam_call(backend, "decoder", inputs)[0].clone()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        on_side = _seam_call(backend, "decoder", inputs)[0].clone()
    torch.cuda.synchronize()
    torch.testing.assert_close(on_side, on_default, rtol=0, atol=0)


@pytest.mark.cuda
@requires_gpu
def test_limits_beyond_the_profiles_are_clear_errors(tiny):
    _, _, backend = tiny
    with pytest.raises(HodorError, match="--max-objects"):
        backend.check_limits(TINY_LIMITS.max_objects + 1, 1, 64, 64)
    with pytest.raises(HodorError, match="--max-window"):
        backend.check_limits(1, TINY_LIMITS.max_history + 1, 64, 64)
    with pytest.raises(HodorError, match="--max-size"):
        backend.check_limits(1, 1, 64, TINY_LIMITS.max_size + 32)
    with pytest.raises(HodorError, match="--max-streams"):
        backend.check_limits(1, 1, 64, 64, streams=TINY_LIMITS.max_streams + 1)
    backend.check_limits(
        TINY_LIMITS.max_objects, TINY_LIMITS.max_history, 64, TINY_LIMITS.max_size, TINY_LIMITS.max_streams
    )


@pytest.mark.cuda
@requires_gpu
def test_rtx_runtime_cache_is_saved_and_loaded(tmp_path):
    if "rtx" not in installed_flavours():
        pytest.skip("TensorRT for RTX is not installed: it is the flavour with a runtime cache")
    manifest = _tiny_engines(tmp_path, "fp32")
    if manifest.tensorrt.flavour != "rtx":
        pytest.skip("auto picked TensorRT here; the runtime cache is TensorRT for RTX's")
    why = probe_engines(tmp_path, manifest)
    if why is not None:
        pytest.skip(f"TensorRT for RTX engines cannot run on this GPU: {why}")
    backend = TensorRTBackend(tmp_path, manifest, "cuda")
    _seam_call(backend, "decoder", _inputs("decoder", 64, 96, 2, 2, batch=1, seed=3))
    backend.close()
    caches = list(tmp_path.glob("runtime-cache.sm_*.bin"))
    assert len(caches) == 1 and caches[0].stat().st_size > 0
    again = TensorRTBackend(tmp_path, manifest, "cuda")  # loads it (a mismatch would only be logged)
    _seam_call(again, "decoder", _inputs("decoder", 64, 96, 2, 2, batch=1, seed=3))
    again.close()


@pytest.mark.cuda
@requires_gpu
def test_rtx_engines_on_this_gpu_run_or_are_refused_with_a_clear_message(tmp_path):
    """Whether TensorRT for RTX engines run on this GPU (Hopper: sm_90 is not among its targets)
    is found out here, not assumed: either they load and compute, or loading says why."""
    if "rtx" not in installed_flavours():
        pytest.skip("TensorRT for RTX is not installed")
    major, minor = torch.cuda.get_device_capability()
    manifest = write_tiny_export(tmp_path)
    record = build_engines(tmp_path, manifest, "rtx", "on", progress=lambda _: None)
    manifest = with_tensorrt(manifest, record)
    why = probe_engines(tmp_path, manifest)
    print(
        f"\n  TensorRT for RTX {record.version} targets {list(record.targets)} on "
        f"{torch.cuda.get_device_name()} (sm_{major}{minor}): {why or 'usable'}"
    )
    if why is not None:
        with pytest.raises(HodorError, match="does not fit|could not load"):
            TensorRTBackend(tmp_path, manifest, "cuda")
        return
    backend = TensorRTBackend(tmp_path, manifest, "cuda")
    inputs = _inputs("encoder", 64, 96, 2, 1, batch=1, seed=4)
    got = _seam_call(backend, "encoder", inputs)
    want = _ort_stage(tmp_path, manifest, "encoder")(**inputs)
    assert relative_error(got[0].cpu(), want[0]) <= TOLERANCE["fp32"]
    backend.close()


@pytest.mark.cuda
@requires_gpu
def test_an_engine_built_for_another_gpu_is_refused_clearly(tmp_path):
    flavour = _flavour_or_skip()
    major, minor = torch.cuda.get_device_capability()
    here = f"sm_{major}{minor}"
    if flavour.name == "rtx":
        others = [t for t in ("sm_86", "sm_120", "sm_89", "sm_80") if t != here]
        manifest = _tiny_engines(tmp_path, "fp32", targets=[others[0]])
    else:
        # TensorRT builds for this GPU only; the record is what says which GPU that was.
        manifest = _tiny_engines(tmp_path, "fp32")
        record = replace(manifest.tensorrt, targets=("sm_1",), gpu="another GPU")
        manifest = with_tensorrt(manifest, record)
    why = probe_engines(tmp_path, manifest)
    if why is None:
        pytest.skip(
            f"an engine for {list(manifest.tensorrt.targets)} is accepted on {here} (compatible targets)"
        )
    with pytest.raises(HodorError) as err:
        TensorRTBackend(tmp_path, manifest, "cuda")
    assert "\n" not in str(err.value) and "Re-export" in str(err.value)


# --------------------------------------------------------------------------- the real graphs


@pytest.fixture(scope="module")
def real_exports(tmp_path_factory, parity_checkpoint):
    """hodor-export of the parity checkpoint with engines, fp32 and fp16 (the slow part: minutes)."""
    if not HAVE_GPU:
        pytest.skip("no CUDA GPU here: TensorRT engines run only on an NVIDIA GPU")
    _flavour_or_skip()
    from hodor.export import cli

    exports = {}
    for precision in ("fp32", "fp16"):
        out = tmp_path_factory.mktemp("export") / f"parity.{precision}.hodor"
        code = cli.main(
            [
                str(parity_checkpoint),
                "--out",
                str(out),
                "--precision",
                precision,
                "--tensorrt",
                "on",
                "--max-objects",
                "4",
                "--max-window",
                "7",
                "--max-batch",
                "4",
                "--max-size",
                "512",
            ]
        )
        assert code == 0
        manifest = load_manifest(out)
        assert manifest.tensorrt is not None and manifest.tensorrt.precision == precision
        why = probe_engines(out, manifest)
        if why is not None:
            pytest.skip(f"the exported engines cannot run on this GPU: {why}")
        exports[precision] = out
    return exports


@pytest.mark.cuda
@pytest.mark.slow
@requires_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engines_per_stage_against_the_network(real_exports, parity_checkpoint, precision):
    """Each stage's engine against the PyTorch network at two sizes, several object counts and
    history lengths; relative error within the precision's tolerance (printed)."""
    from hodor.config import config_beside
    from hodor.export.onnx_export import STAGE_MODULES, _Bounds, example_inputs
    from hodor.model import load_hodor

    export = real_exports[precision]
    manifest = load_manifest(export)
    cfg = config_beside(parity_checkpoint)
    net = load_hodor(parity_checkpoint, cfg, torch.device("cpu")).eval()
    backend = TensorRTBackend(export, manifest, "cuda")
    num_bg = cfg.model.num_bg_descriptors
    worst: dict[str, float] = {}
    for h, w in ((256, 448), (320, 256)):
        for objects, history in ((1, 1), (3, 5)):
            bounds = _Bounds(2, h, w, objects, history, streams=2)
            for stage in STAGES:
                args = example_inputs(stage, num_bg, bounds, torch.Generator().manual_seed(h + objects))
                names = [s.name for s in manifest.graph(stage, precision).inputs]
                with torch.no_grad():
                    want = STAGE_MODULES[stage](net).eval()(*args)
                want = [want] if isinstance(want, torch.Tensor) else list(want)
                got = _seam_call(backend, stage, dict(zip(names, args, strict=True)))
                for g, w_ in zip(got, want, strict=True):
                    err = relative_error(g.float().cpu(), w_)
                    worst[stage] = max(worst.get(stage, 0.0), err)
    backend.close()
    print(
        f"\n  {precision} engines, max relative error per stage: "
        + ", ".join(f"{s} {e:.1e}" for s, e in worst.items())
    )
    assert all(e <= TOLERANCE[precision] for e in worst.values()), worst


@pytest.mark.cuda
@pytest.mark.slow
@requires_gpu
def test_hodor_run_tensorrt_fp32_passes_parity_case_a(real_exports, parity_case, tmp_path, capsys):
    """The fixture README's rule: >= 99.9 % on frames without a reference; reference frames
    show every annotated pixel exactly and agree on >= 99 %."""
    from hodor.engine import cli
    from tests.parity_fixture import parity_check, parity_run_args

    out = tmp_path / "out"
    code = cli.main(
        parity_run_args(parity_case, out)
        + ["--model", str(real_exports["fp32"]), "--backend", "tensorrt", "--device", "cuda"]
    )
    out_text, err = capsys.readouterr()
    assert code == 0, err
    assert "tensorrt" in out_text + err  # the summary names the backend that ran

    _, failures = parity_check(parity_case, out)
    assert not failures, f"frames below the parity rule: {failures}"
