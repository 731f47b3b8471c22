"""The torch backend's kernels and precision (``hodor-run --kernels/--precision/--no-cuda-graphs``).

On the CPU: option parsing, defaults, the errors a user can cause, the float32 edge of a
half-precision backend, and a short ``hodor-run --kernels triton`` in Triton's interpreter
against ``--kernels torch``. On a GPU: parity fixture case-a with the Triton kernels in
fp32, and fp16 / bf16 against fp32 per stage.

Relative error, as in :mod:`hodor.kernels.testing`: ``max |out − ref| / max |ref|`` over
the reference's finite entries, non-finite entries required to match. Per-stage limits
for half precision against fp32, on every stage output (features, descriptors, logits)
given the same float32 inputs: fp16 1e-2, bf16 5e-2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hodor.config import config_beside
from hodor.engine import cli
from hodor.engine.backends import torch_backend
from hodor.engine.backends.registry import open_backend
from hodor.engine.backends.torch_backend import (
    TorchBackend,
    TorchOptions,
    cpu_supports_bf16,
    open_torch_backend,
    resolve_dtype,
    resolve_kernels,
)
from hodor.errors import HodorError
from hodor.kernels.testing import relative_error
from hodor.model import load_hodor
from hodor.model.kernel_choice import fused_kernels
from tests.engine_fake_backend import FakeBackend, small_config
from tests.parity_fixture import parity_check, parity_run_args

NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"
HALF_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def clip(tmp_path) -> tuple[Path, Path]:
    """Three 48×64 frames with two moving boxes, and the reference mask of frame 0."""
    frames = tmp_path / "clip"
    frames.mkdir()
    for t in range(3):
        f = np.full((48, 64, 3), 60, np.uint8)
        f[6:26, 4 + 2 * t : 24 + 2 * t] = (230, 40, 40)
        f[24:44, 36 - 2 * t : 60 - 2 * t] = (40, 200, 70)
        Image.fromarray(f).save(frames / f"{t:05d}.png")
    ids = np.zeros((48, 64), np.uint8)
    ids[6:26, 4:24] = 1
    ids[24:44, 36:60] = 2
    mask = Image.fromarray(ids, mode="P")
    mask.putpalette([(i * 53) % 256 for i in range(768)])
    mask.save(tmp_path / "00000.png")
    return frames, tmp_path / "00000.png"


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    _, err = capsys.readouterr()
    return code, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("hodor-run: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


# --------------------------------------------------------------------------- options and defaults


def test_options_reach_the_backend_opener(tmp_path, clip, capsys, monkeypatch):
    seen = []

    def open_fake(model_path, backend, device, overrides, torch_options=None):
        seen.append(torch_options)
        return FakeBackend(config=overrides.apply(small_config(min_dim=48, max_dim=96)))

    monkeypatch.setattr(cli, "open_backend", open_fake)
    (tmp_path / "m.pth").write_bytes(b"x")
    frames, mask = clip
    base = [frames, "--masks", mask, "--model", tmp_path / "m.pth", "--no-overlay"]
    assert run_cli([*base, "--out", tmp_path / "a"], capsys)[0] == 0
    args = ["--kernels", "triton", "--precision", "bf16", "--no-cuda-graphs", "--out", tmp_path / "b"]
    assert run_cli([*base, *args], capsys)[0] == 0
    assert seen[0] == TorchOptions()  # nothing given: the backend picks its defaults
    assert seen[1] == TorchOptions(kernels="triton", precision="bf16", cuda_graphs=False)


@pytest.mark.parametrize("option", [["--kernels", "cuda"], ["--precision", "fp8"], ["--precision"]])
def test_bad_option_values_exit_2(option, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["in.mp4", "--masks", "m.png", *option])
    assert exc.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_default_kernels(monkeypatch):
    fused = fused_kernels()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_kernels(None, CPU) == "torch"  # never the (slow) interpreter by default
    monkeypatch.setattr(fused, "HAVE_TRITON", True)
    assert resolve_kernels(None, CUDA) == "triton"
    monkeypatch.setattr(fused, "HAVE_TRITON", False)
    assert resolve_kernels(None, CUDA) == "torch"
    assert resolve_kernels("torch", CUDA) == "torch"


def test_precision_values():
    assert resolve_dtype(None, CPU) == torch.float32
    assert resolve_dtype("fp32", CPU) == torch.float32
    assert resolve_dtype(torch.float32, CPU) == torch.float32
    for bad in ("fp16", torch.float16):
        with pytest.raises(HodorError, match="runs on CUDA GPUs only"):
            resolve_dtype(bad, CPU)
    with pytest.raises(HodorError, match="unknown precision 'fp8'"):
        resolve_dtype("fp8", CPU)
    with pytest.raises(HodorError, match="unsupported dtype"):
        resolve_dtype(torch.float64, CPU)


# --------------------------------------------------------------------------- errors a user can cause


def test_triton_on_cpu_without_the_interpreter(tmp_path, clip, capsys, monkeypatch, parity_checkpoint):
    pytest.importorskip("triton", reason="with Triton missing the message is another one (tested below)")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    frames, mask = clip
    args = [frames, "--masks", mask, "--model", parity_checkpoint, "--out", tmp_path / "o", "--no-overlay"]
    code, err = run_cli([*args, "--device", "cpu", "--kernels", "triton"], capsys)
    assert_user_error(code, err, "--kernels triton", "CUDA", "TRITON_INTERPRET=1", "--kernels torch")


def test_triton_not_installed(tmp_path, clip, capsys, monkeypatch, parity_checkpoint):
    monkeypatch.setattr(fused_kernels(), "HAVE_TRITON", False)
    frames, mask = clip
    args = [frames, "--masks", mask, "--model", parity_checkpoint, "--out", tmp_path / "o", "--no-overlay"]
    code, err = run_cli([*args, "--device", "cpu", "--kernels", "triton"], capsys)
    assert_user_error(code, err, "--kernels triton", "Triton is not installed", "hodor-engine[triton]")


def test_fp16_on_cpu(tmp_path, clip, capsys, parity_checkpoint):
    frames, mask = clip
    args = [frames, "--masks", mask, "--model", parity_checkpoint, "--out", tmp_path / "o", "--no-overlay"]
    code, err = run_cli([*args, "--device", "cpu", "--precision", "fp16"], capsys)
    assert_user_error(code, err, "--precision fp16", "--device cuda", "--precision fp32")


def test_bf16_on_a_cpu_without_it(tmp_path, clip, capsys, parity_checkpoint, monkeypatch):
    monkeypatch.setattr(torch_backend, "cpu_supports_bf16", lambda: False)
    frames, mask = clip
    args = [frames, "--masks", mask, "--model", parity_checkpoint, "--out", tmp_path / "o", "--no-overlay"]
    code, err = run_cli([*args, "--device", "cpu", "--precision", "bf16"], capsys)
    assert_user_error(code, err, "--precision bf16", "AVX-512 BF16 or AMX", "--precision fp32")
    with pytest.raises(HodorError, match="AVX-512 BF16 or AMX"):
        resolve_dtype("bf16", CPU)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has neither AVX-512 BF16 nor AMX")
def test_bf16_on_the_cpu(tmp_path, clip, capsys, parity_checkpoint, monkeypatch):
    """``hodor-run --device cpu --precision bf16`` runs the network in bf16 (weights included)."""
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    opened = []

    def recording_open_backend(*args, **kwargs):
        opened.append(open_backend(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(cli, "open_backend", recording_open_backend)
    frames, mask = clip
    args = [frames, "--masks", mask, "--model", parity_checkpoint, "--out", tmp_path / "o", "--no-overlay"]
    code, err = run_cli([*args, "--device", "cpu", "--precision", "bf16", "--min-dim", "32"], capsys)
    assert code == 0, err
    backend = opened[0]
    assert backend.dtype == torch.bfloat16 and next(backend.net.parameters()).dtype == torch.bfloat16
    assert len(list((tmp_path / "o" / "masks").iterdir())) == 3


def test_torch_options_with_an_export_directory(tmp_path, clip, capsys):
    export = tmp_path / "m.hodor"
    export.mkdir()
    frames, mask = clip
    args = [frames, "--masks", mask, "--model", export, "--out", tmp_path / "o"]
    code, err = run_cli([*args, "--precision", "fp16", "--kernels", "torch"], capsys)
    assert_user_error(code, err, "--kernels torch and --precision fp16", "export directory", "hodor-export")
    with pytest.raises(HodorError, match="--no-cuda-graphs"):
        open_backend(export, "auto", None, torch_options=TorchOptions(cuda_graphs=False))


def test_history_beyond_the_fused_logits_kernel(parity_checkpoint):
    pytest.importorskip("triton", reason="the fused kernels need the triton package")
    from hodor.kernels.mask_logits import MAX_HISTORY

    net = load_hodor(parity_checkpoint, config_beside(parity_checkpoint))
    backend = TorchBackend(net, config_beside(parity_checkpoint), CPU, kernels="triton")
    backend.check_limits(4, MAX_HISTORY, 256, 448)
    with pytest.raises(HodorError, match="--temporal-window"):
        backend.check_limits(4, MAX_HISTORY + 1, 256, 448)
    TorchBackend(net, backend.config, CPU, kernels="torch").check_limits(4, MAX_HISTORY + 1, 256, 448)


# --------------------------------------------------------------------------- runs on the CPU


def test_hodor_run_with_triton_kernels_in_the_interpreter_matches_torch(
    tmp_path, clip, capsys, monkeypatch, parity_checkpoint
):
    """The fused kernels through the whole command on the CPU (Triton's interpreter)."""
    pytest.importorskip("triton", reason="the fused kernels need the triton package")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    frames, mask = clip
    # --min-dim 32: frames padded to 32×64, so the interpreter has little to do
    args = [frames, "--masks", mask, "--model", parity_checkpoint, "--device", "cpu", "--min-dim", "32"]
    args += ["--temporal-window", "2", "--no-overlay"]
    for kernels in ("torch", "triton"):
        code, err = run_cli([*args, "--kernels", kernels, "--out", tmp_path / kernels], capsys)
        assert code == 0, err
    for t in range(3):
        a = np.asarray(Image.open(tmp_path / "torch" / "masks" / f"{t:05d}.png"))
        b = np.asarray(Image.open(tmp_path / "triton" / "masks" / f"{t:05d}.png"))
        assert (a == b).mean() >= 0.999, f"frame {t}: {(a == b).mean():.5f} of pixels agree"
        assert {1, 2} <= set(np.unique(b).tolist()), f"frame {t}: an object was lost"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stages_on_cpu(parity_checkpoint, dtype):
    """The casts at the backend's edge and the per-stage limits, with CPU arithmetic standing in
    for the GPU's (hodor-run refuses fp16 on the CPU; the class itself does not)."""
    check_half_precision_stages(parity_checkpoint, CPU, dtype, "torch", size=(32, 64))


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has neither AVX-512 BF16 nor AMX")
def test_bf16_stages_on_cpu_at_a_larger_size(parity_checkpoint):
    """``--device cpu --precision bf16`` per stage against fp32, on a frame large enough for every
    Swin window and the deformable sampling to matter (1/8 map 16x28)."""
    check_half_precision_stages(parity_checkpoint, CPU, torch.bfloat16, "torch", size=(128, 224))


def check_half_precision_stages(
    checkpoint: Path, device: torch.device, dtype: torch.dtype, kernels: str, size: tuple[int, int]
) -> None:
    """One frame's backbone, encode and single decode step in ``dtype`` against fp32, each stage
    given the fp32 run's inputs; outputs cross the edge as float32 (features excepted)."""
    cfg = config_beside(checkpoint)
    ref = TorchBackend(load_hodor(checkpoint, cfg, device=device), cfg, device, kernels=kernels)
    half = TorchBackend(load_hodor(checkpoint, cfg, device=device), cfg, device, kernels=kernels, dtype=dtype)
    tol = HALF_TOLERANCE[dtype]
    g = torch.Generator().manual_seed(5)

    image = torch.randn(1, 3, *size, generator=g).to(device)
    f4, f8 = ref.backbone(image)
    h4, h8 = half.backbone(image)
    assert h4.dtype == h8.dtype == dtype  # features stay in the compute dtype
    h, w = f8.shape[-2:]
    fg = torch.zeros(1, 2, h, w)
    fg[0, 0, 1 : h // 2, 1 : w // 2] = 1.0
    fg[0, 1, h // 2 :, w // 2 :] = 0.7
    bg = torch.rand(1, 9, h, w, generator=g) * (1.0 - fg.sum(1, keepdim=True))
    fg, bg = fg.to(device), bg.to(device)
    ref_desc = ref.encode(f8, fg, bg)
    half_desc = half.encode(f8, fg, bg)

    t = 3
    fg_hist = ref_desc[0][:, :, None].expand(-1, -1, t, -1) + 0.1 * torch.randn(1, 2, t, 256, generator=g).to(
        device
    )
    bg_hist = ref_desc[1][:, :, None].expand(-1, -1, t, -1).contiguous()
    fg_invalid = torch.zeros(1, 2, t, dtype=torch.bool, device=device)
    fg_invalid[0, 1, 0] = True
    bg_invalid = torch.zeros(1, 9, t, dtype=torch.bool, device=device)
    bg_invalid[..., -1] = True
    history = (fg_hist, bg_hist, fg_invalid, bg_invalid)
    ref_logits = ref.decode(f4, f8, *history)
    half_logits = half.decode(f4, f8, *history)

    outputs = {
        "f4": (h4, f4),
        "f8": (h8, f8),
        "fg_desc": (half_desc[0], ref_desc[0]),
        "bg_desc": (half_desc[1], ref_desc[1]),
        "logits": (half_logits, ref_logits),
    }
    errors = {name: relative_error(got, want) for name, (got, want) in outputs.items()}
    for name in ("fg_desc", "bg_desc", "logits"):
        assert outputs[name][0].dtype == torch.float32, (
            f"{name} leaves the backend as {outputs[name][0].dtype}"
        )
    bad = {name: f"{err:.3g}" for name, err in errors.items() if not err <= tol}
    assert not bad, f"{dtype}: relative error above {tol:g}: {bad} (all: {errors})"


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("graphs", [True, False], ids=["cuda-graphs", "eager"])
def test_parity_with_triton_kernels_on_cuda(
    parity_case, parity_checkpoint, tmp_path, capsys, monkeypatch, graphs
):
    """``hodor-run --backend torch --device cuda --kernels triton`` (fp32) on fixture case-a, by the
    rule of tests/test_parity_torch.py."""
    pytest.importorskip("triton", reason="the fused kernels need the triton package")
    opened = []

    def recording_open_backend(*args, **kwargs):
        opened.append(open_backend(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(cli, "open_backend", recording_open_backend)
    out = tmp_path / "out"
    args = parity_run_args(parity_case, out)
    args += ["--model", parity_checkpoint, "--backend", "torch", "--device", "cuda", "--kernels", "triton"]
    args += ["--precision", "fp32"]
    if not graphs:
        args.append("--no-cuda-graphs")
    code, err = run_cli(args, capsys)
    assert code == 0, err

    backend = opened[0]
    assert backend.kernels == "triton" and backend.dtype == torch.float32
    if graphs:
        assert backend.graphs.failure is None, backend.graphs.failure
        assert backend.graphs.stats.replays > 0
    else:
        assert backend.graphs.stats.captures == 0

    _, failures = parity_check(parity_case, out)
    assert not failures, f"frames below the parity rule: {failures}"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("kernels", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stages_on_cuda(parity_checkpoint, monkeypatch, dtype, kernels):
    if kernels == "triton":
        pytest.importorskip("triton", reason="the fused kernels need the triton package")
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} does not support bfloat16")
    # The fp32 reference must be fp32 throughout: no TF32 convolutions or products.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    # A 480-pixel-high frame, HODOR's usual processing size (1/8 map 60×108).
    check_half_precision_stages(parity_checkpoint, CUDA, dtype, kernels, size=(480, 864))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_open_torch_backend_defaults_on_cuda(parity_checkpoint):
    cfg = config_beside(parity_checkpoint)
    backend = open_torch_backend(parity_checkpoint, cfg, "cuda")
    want = "triton" if fused_kernels().HAVE_TRITON else "torch"
    assert (backend.kernels, backend.dtype, backend.graphs.enabled) == (want, torch.float32, True)
    half = open_torch_backend(
        parity_checkpoint, cfg, "cuda", kernels="torch", dtype="fp16", cuda_graphs=False
    )
    assert (half.kernels, half.dtype, half.graphs.enabled) == ("torch", torch.float16, False)
    assert next(half.net.parameters()).dtype == torch.float16
