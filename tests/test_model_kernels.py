"""HodorNet with the fused Triton kernels against the plain-torch path, per stage.

The Triton runs happen on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``), or on
CUDA where a GPU is present, at a small size: a 64×96 padded frame (1/8 map 8×12),
2 objects, 9 background cells, histories of 1 and 3 frames, the parity fixture's weights.

Relative error, as in :mod:`hodor.kernels.testing`: ``max |triton − torch| / max |torch|``
over the finite entries, the ±∞ entries (logits of a descriptor without valid history)
required to match exactly. Limit: 1e-4 in fp32 per stage output. Each kernel alone is
held to 1e-5; five encoder or decoder layers compound their differences.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import hodor.model.kernel_choice as kernel_choice
from hodor.config import config_beside, parse_config
from hodor.errors import HodorError
from hodor.kernels.testing import relative_error
from hodor.model import HodorNet, load_hodor

STAGE_TOLERANCE = 1e-4
FUSED = ("soft_masked_attention", "pixel_descriptor_attention", "mask_logits", "masked_avg_pool")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def net(parity_checkpoint) -> HodorNet:
    return load_hodor(parity_checkpoint, config_beside(parity_checkpoint), device=DEVICE).eval()


@pytest.fixture(scope="module")
def inputs(net) -> dict[str, torch.Tensor]:
    """Backbone features of a 64×96 frame and soft masks at 1/8 (background cells first)."""
    g = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        f4, f8 = net.backbone(torch.randn(1, 3, 64, 96, generator=g).to(DEVICE))
    h, w = f8.shape[-2:]
    fg = torch.zeros(1, 2, h, w)
    fg[0, 0, 1:5, 2:7] = torch.rand(4, 5, generator=g) * 0.5 + 0.5  # a soft blob
    fg[0, 1, 4:8, 7:11] = 1.0  # a hard box
    cells = torch.zeros(1, 9, h, w)
    for k in range(9):  # a 3×3 grid, remainder in the last row and column
        r, c = divmod(k, 3)
        cells[
            0,
            k,
            r * (h // 3) : (r + 1) * (h // 3) if r < 2 else h,
            c * (w // 3) : (c + 1) * (w // 3) if c < 2 else w,
        ] = 1
    bg = cells * (1.0 - fg.sum(1, keepdim=True)).clamp(min=0.0)
    bg[0, 8] = 0.0  # an empty background cell: the pooling falls back to zeros
    return {"f4": f4, "f8": f8, "fg": fg.to(DEVICE), "bg": bg.to(DEVICE)}


@pytest.fixture
def fused_calls(monkeypatch):
    """The fused kernels runnable here (CUDA, else Triton's interpreter); counts their calls."""
    pytest.importorskip("triton", reason="the fused kernels need the triton package")
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        # TF32 convolutions would turn the kernels' 1e-6 differences into 1e-3 ones downstream.
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    fused = kernel_choice.fused_kernels()
    calls: dict[str, int] = dict.fromkeys(FUSED, 0)
    for name in FUSED:
        original = getattr(fused, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            assert kwargs.get("impl") == "triton"
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fused, name, counted)
    deform = kernel_choice.fused_deform_conv()
    calls["deform_conv2d"] = 0
    original_deform = deform.deform_conv2d_triton

    def counted_deform(*args, **kwargs):
        calls["deform_conv2d"] += 1
        return original_deform(*args, **kwargs)

    monkeypatch.setattr(deform, "deform_conv2d_triton", counted_deform)
    return calls


def run(net: HodorNet, kernels: str, stage: str, *args: torch.Tensor):
    net.set_kernels(kernels)
    try:
        with torch.inference_mode():
            return getattr(net, stage)(*args)
    finally:
        net.set_kernels("torch")


def history(fg_desc: torch.Tensor, bg_desc: torch.Tensor, t: int, seed: int):
    """``t`` history slots around the given descriptors; with t > 1 object 2 joined at the second
    slot and the current slot has no background descriptors (as the runtime decodes)."""
    g = torch.Generator().manual_seed(seed)
    fg = fg_desc[:, :, None].expand(-1, -1, t, -1) + 0.1 * torch.randn(1, 2, t, 256, generator=g).to(DEVICE)
    bg = bg_desc[:, :, None].expand(-1, -1, t, -1) + 0.1 * torch.randn(1, 9, t, 256, generator=g).to(DEVICE)
    fg_invalid = torch.zeros(1, 2, t, dtype=torch.bool, device=DEVICE)
    bg_invalid = torch.zeros(1, 9, t, dtype=torch.bool, device=DEVICE)
    if t > 1:
        fg_invalid[0, 1, 0] = True
        bg_invalid[..., -1] = True
    return fg, bg, fg_invalid, bg_invalid


def test_encode_with_triton_kernels_matches_torch(net, inputs, fused_calls):
    args = (inputs["f8"], inputs["fg"], inputs["bg"])
    assert net.kernels == "torch"  # the default
    want = run(net, "torch", "encode", *args)
    got = run(net, "triton", "encode", *args)
    assert net.kernels == "torch"
    again = run(net, "torch", "encode", *args)
    assert all(torch.equal(a, b) for a, b in zip(again, want, strict=True)), "torch path changed by a switch"
    assert fused_calls["masked_avg_pool"] == 1
    assert fused_calls["soft_masked_attention"] == net.config.encoder_layers
    for name, g, w in zip(("fg_desc", "bg_desc"), got, want, strict=True):
        err = relative_error(g, w)
        assert err <= STAGE_TOLERANCE, f"{name}: relative error {err:.3g} > {STAGE_TOLERANCE:g}"


@pytest.mark.parametrize("t", [1, 3])
def test_decode_with_triton_kernels_matches_torch(net, inputs, fused_calls, t):
    fg_desc, bg_desc = run(net, "torch", "encode", inputs["f8"], inputs["fg"], inputs["bg"])
    args = (inputs["f4"], inputs["f8"], *history(fg_desc, bg_desc, t, seed=t))
    want = run(net, "torch", "decode", *args)
    got = run(net, "triton", "decode", *args)
    assert fused_calls["pixel_descriptor_attention"] == net.config.decoder_layers
    assert fused_calls["deform_conv2d"] == net.config.decoder_layers
    assert fused_calls["mask_logits"] == 1
    assert got.shape == want.shape == (1, 1 + 9 + 2, 16, 24)
    err = relative_error(got, want)
    assert err <= STAGE_TOLERANCE, f"logits: relative error {err:.3g} > {STAGE_TOLERANCE:g}"


def test_set_kernels_reaches_every_module_and_adds_no_weights():
    cfg = parse_config({"MODEL": {"ENCODER_LAYERS": 1, "DECODER_LAYERS": 1}}).model
    model = HodorNet(cfg)
    keys = list(model.state_dict())
    users = [m for m in model.modules() if isinstance(m, kernel_choice.SelectsKernels)]
    # encoder (pooling), its cross-attention, decoder (logits), its layer's attention and
    # deformable convolution
    assert len(users) == 5
    pytest.importorskip("triton", reason="choosing the fused kernels needs the triton package")
    assert model.set_kernels("triton") is model
    assert model.kernels == "triton" and all(m.kernels == "triton" for m in users)
    assert list(model.state_dict()) == keys
    assert HodorNet(cfg, kernels="triton").encoder.kernels == "triton"


def test_unknown_kernels_and_missing_triton(monkeypatch):
    cfg = parse_config({"MODEL": {"ENCODER_LAYERS": 1, "DECODER_LAYERS": 1}}).model
    model = HodorNet(cfg)
    with pytest.raises(ValueError, match="kernels must be one of torch, triton"):
        model.set_kernels("cuda")
    monkeypatch.setattr(kernel_choice.fused_kernels(), "HAVE_TRITON", False)
    with pytest.raises(HodorError, match="Triton is not installed"):
        model.set_kernels("triton")
    assert model.kernels == "torch"
    assert kernel_choice.triton_unavailable_reason(torch.device("cuda")).startswith("Triton is not installed")


def test_triton_device_rules(monkeypatch):
    pytest.importorskip("triton", reason="the rules for where Triton runs need the triton package")
    assert kernel_choice.triton_unavailable_reason(torch.device("cuda")) is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_choice.triton_unavailable_reason(torch.device("cpu")) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in kernel_choice.triton_unavailable_reason(torch.device("cpu"))


def test_the_torch_path_runs_without_triton():
    """The model must run (and export) where Triton is not installed: its default path computes with
    the plain-torch references of hodor.kernels, which import and run without Triton."""
    code = (
        "import sys, torch\n"
        "sys.modules['triton'] = None  # import triton -> ImportError, as where it is not installed\n"
        "from hodor.config import parse_config\n"
        "from hodor.model import HodorNet\n"
        "cfg = parse_config({'MODEL': {'ENCODER_LAYERS': 1, 'DECODER_LAYERS': 1}}).model\n"
        "net = HodorNet(cfg).eval()\n"
        "with torch.inference_mode():\n"
        "    f4, f8 = net.backbone(torch.randn(1, 3, 64, 64))\n"
        "    fg, bg = net.encode(f8, torch.rand(1, 1, 8, 8), torch.rand(1, 9, 8, 8))\n"
        "    net.decode(f4, f8, fg[:, :, None], bg[:, :, None], torch.zeros(1, 1, 1, dtype=torch.bool),\n"
        "               torch.zeros(1, 9, 1, dtype=torch.bool))\n"
        "loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split('.')[0] == 'triton']\n"
        "print(sorted(loaded))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
