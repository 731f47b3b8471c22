"""Every supported configuration builds, loads its own weights strictly and runs the three stages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hodor.config import ModelConfig, load_config
from hodor.model import HodorNet, load_hodor
from hodor.model.checkpoint import hodor_from_state_dict
from tests.parity_fixture import CASE_A

H, W = 64, 96  # 1/8 map 8 x 12, 1/4 map 16 x 24
BASE = load_config(CASE_A / "spec" / "config.yaml").model

VARIANTS = {
    "parity": BASE,
    "pre-norm": replace(BASE, pre_normalize=True, encoder_layers=2, decoder_layers=2),
    "no-pos-enc": replace(BASE, pos_encodings_in_encoder=False, pos_encodings_in_decoder=False),
    "pos-enc-both": replace(BASE, pos_encodings_in_encoder=True, encoder_layers=1, decoder_layers=1),
    "bg1": replace(BASE, num_bg_descriptors=1, encoder_layers=1, decoder_layers=1),
    "bg2": replace(BASE, num_bg_descriptors=2, encoder_layers=1, decoder_layers=1),
    "bg4-pre-norm": replace(
        BASE, num_bg_descriptors=4, pre_normalize=True, encoder_layers=1, decoder_layers=3
    ),
    "bg12": replace(BASE, num_bg_descriptors=12, encoder_layers=1, decoder_layers=1),
    "bg16": replace(BASE, num_bg_descriptors=16, encoder_layers=3, decoder_layers=1),
}


def _own_weights_net(cfg: ModelConfig, tmp_path: Path, through_file: bool) -> HodorNet:
    """A network loaded strictly from another instance's (random) weights."""
    torch.manual_seed(0)
    state = HodorNet(cfg).state_dict()
    if through_file:
        torch.save({"model": state, "iteration": 1}, tmp_path / "model.pth")
        return load_hodor(tmp_path / "model.pth", cfg)
    return hodor_from_state_dict(state, cfg)


def _inputs(cfg: ModelConfig, num_obj: int, t: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    qb = cfg.num_bg_descriptors
    fg_masks = (torch.rand(1, num_obj, H // 8, W // 8, generator=gen) > 0.5).float()
    bg_masks = torch.rand(1, qb, H // 8, W // 8, generator=gen)
    fg_hist = torch.randn(1, num_obj, t, 256, generator=gen)
    bg_hist = torch.randn(1, qb, t, 256, generator=gen)
    fg_invalid = torch.zeros(1, num_obj, t, dtype=torch.bool)
    bg_invalid = torch.zeros(1, qb, t, dtype=torch.bool)
    bg_invalid[..., -1] = True  # as in the loop: the current frame's background is not known yet
    return fg_masks, bg_masks, fg_hist, bg_hist, fg_invalid, bg_invalid


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_runs(name: str, tmp_path) -> None:
    cfg = VARIANTS[name]
    net = _own_weights_net(cfg, tmp_path, through_file=name == "bg4-pre-norm")
    assert ("encoder.norm.weight" in net.state_dict()) == cfg.pre_normalize
    assert ("decoder.norm_fmap.weight" in net.state_dict()) == cfg.pre_normalize
    assert ("decoder.attn_layers.0.norm1.weight" in net.state_dict()) != cfg.pre_normalize

    num_obj, t, qb = 3, 2, cfg.num_bg_descriptors
    fg_masks, bg_masks, fg_hist, bg_hist, fg_invalid, bg_invalid = _inputs(cfg, num_obj, t)
    with torch.no_grad():
        f4, f8 = net.backbone(torch.randn(2, 3, H, W))
        assert f4.shape == (2, 256, H // 4, W // 4) and f8.shape == (2, 256, H // 8, W // 8)
        f4, f8 = f4[:1], f8[:1]
        fg_desc, bg_desc = net.encode(f8, fg_masks, bg_masks)
        assert fg_desc.shape == (1, num_obj, 256) and bg_desc.shape == (1, qb, 256)
        assert torch.isfinite(fg_desc).all() and torch.isfinite(bg_desc).all()
        logits = net.decode(f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)
    assert logits.shape == (1, 1 + qb + num_obj, H // 4, W // 4)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def parity_net() -> HodorNet:
    torch.manual_seed(1)
    return HodorNet(BASE).eval().requires_grad_(False)


def test_backbone_is_invariant_to_batch_splitting(parity_net: HodorNet) -> None:
    images = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(3))
    f4, f8 = parity_net.backbone(images)
    for i in range(2):
        g4, g8 = parity_net.backbone(images[i : i + 1])
        torch.testing.assert_close(g4, f4[i : i + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g8, f8[i : i + 1], rtol=1e-5, atol=1e-5)


def test_invalid_history_is_ignored(parity_net: HodorNet) -> None:
    f4, f8 = parity_net.backbone(torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(4)))
    _, _, fg_hist, bg_hist, fg_invalid, bg_invalid = _inputs(BASE, num_obj=3, t=3, seed=5)
    fg_invalid[0, 0, 1] = True
    fg_invalid[0, 2, :] = True  # an object with no valid entry at all
    base = parity_net.decode(f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)

    noisy_fg, noisy_bg = fg_hist.clone(), bg_hist.clone()
    noisy_fg[fg_invalid] = 1e3
    noisy_bg[bg_invalid] = -1e3
    other = parity_net.decode(f4, f8, noisy_fg, noisy_bg, fg_invalid, bg_invalid)
    torch.testing.assert_close(other, base)
    obj2 = 1 + BASE.num_bg_descriptors + 2
    assert torch.isneginf(base[0, obj2]).all()
    assert torch.isfinite(torch.cat((base[:, :obj2], base[:, obj2 + 1 :]), 1)).all()


def test_object_order_is_kept(parity_net: HodorNet) -> None:
    """Swapping two objects swaps their descriptors and logit channels, nothing else."""
    f4, f8 = parity_net.backbone(torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(6)))
    fg_masks, bg_masks, fg_hist, bg_hist, fg_invalid, bg_invalid = _inputs(BASE, num_obj=2, t=2, seed=7)
    perm = [1, 0]
    fg, bg = parity_net.encode(f8, fg_masks, bg_masks)
    fg_p, bg_p = parity_net.encode(f8, fg_masks[:, perm], bg_masks)
    torch.testing.assert_close(fg_p, fg[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bg_p, bg, rtol=1e-5, atol=1e-5)
    logits = parity_net.decode(f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)
    logits_p = parity_net.decode(f4, f8, fg_hist[:, perm], bg_hist, fg_invalid[:, perm], bg_invalid)
    qb1 = 1 + BASE.num_bg_descriptors
    torch.testing.assert_close(logits_p[:, :qb1], logits[:, :qb1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits_p[:, qb1:], logits[:, qb1:][:, perm], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_runs(dtype: torch.dtype) -> None:
    """Casting the model keeps every intermediate in that dtype (no float32 leaks, no overflow)."""
    cfg = replace(BASE, pos_encodings_in_encoder=True, encoder_layers=1, decoder_layers=1)
    torch.manual_seed(2)
    net = HodorNet(cfg).eval().requires_grad_(False)
    fg_masks, bg_masks, fg_hist, bg_hist, fg_invalid, bg_invalid = _inputs(cfg, num_obj=2, t=2, seed=8)
    fg_invalid[0, 1, 0] = True
    gen = torch.Generator().manual_seed(9)
    f4 = torch.randn(1, 256, H // 4, W // 4, generator=gen)
    f8 = torch.randn(1, 256, H // 8, W // 8, generator=gen)
    with torch.no_grad():
        want = net.decode(f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)
        want_fg, _ = net.encode(f8, fg_masks, bg_masks)
        net = net.to(dtype)
        fg, bg = net.encode(f8.to(dtype), fg_masks, bg_masks)
        logits = net.decode(f4.to(dtype), f8.to(dtype), fg_hist, bg_hist, fg_invalid, bg_invalid)
    assert fg.dtype == bg.dtype == logits.dtype == dtype
    assert torch.isfinite(logits).all()
    assert ((fg.float() - want_fg).norm() / want_fg.norm()).item() < 0.05
    assert ((logits.float() - want).norm() / want.norm()).item() < 0.05
