"""Descriptor initialisation (masked average pooling) against the original per-mask loop semantics."""

from __future__ import annotations

import torch

from hodor.kernels.masked_avg_pool import masked_avg_pool_reference as masked_avg_pool


def _loop_init(fmap: torch.Tensor, masks: torch.Tensor, is_object: bool) -> torch.Tensor:
    """One mask at a time: mean of the pixels > 0.5; if none, the arg-max pixel (objects) or zeros."""
    b, c = fmap.shape[:2]
    feats = fmap.flatten(2).transpose(1, 2)  # [B, HW, C]
    out = torch.zeros(b, masks.shape[1], c)
    for bi in range(b):
        for mi, mask in enumerate(masks[bi].flatten(1)):
            idx = (mask > 0.5).nonzero().squeeze(1)
            if idx.numel() == 0:
                if not is_object:
                    continue
                idx = mask.argmax()[None]
            out[bi, mi] = feats[bi, idx].mean(0)
    return out


def _masks(gen: torch.Generator, b: int, m: int, h: int, w: int) -> torch.Tensor:
    soft = torch.rand(b, m, h, w, generator=gen)
    return soft * (torch.rand(b, m, h, w, generator=gen) > 0.6)


def test_ordinary_masks_match_the_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 16, 6, 9, generator=gen)
    masks = _masks(gen, 2, 5, 6, 9)
    for num_background, is_object in ((0, True), (5, False)):
        got = masked_avg_pool(fmap, masks, num_background)
        torch.testing.assert_close(got, _loop_init(fmap, masks, is_object), rtol=1e-5, atol=1e-6)


def test_object_fallbacks() -> None:
    gen = torch.Generator().manual_seed(1)
    fmap = torch.randn(1, 8, 5, 7, generator=gen)
    masks = _masks(gen, 1, 4, 5, 7)
    masks[0, 0] = 0.0  # all zero: the first pixel
    masks[0, 1] = 0.45 * torch.rand(5, 7, generator=gen)  # nothing above 0.5: the arg-max pixel
    masks[0, 2] = 0.5  # exactly 0.5 is not "> 0.5"; ties: the first maximal pixel
    masks[0, 3, 2, 3] = 0.9
    got = masked_avg_pool(fmap, masks, num_background=0)
    want = _loop_init(fmap, masks, is_object=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    feats = fmap.flatten(2)[0]  # [C, HW]
    torch.testing.assert_close(got[0, 0], feats[:, 0])
    torch.testing.assert_close(got[0, 1], feats[:, masks[0, 1].flatten().argmax()])
    torch.testing.assert_close(got[0, 2], feats[:, 0])


def test_empty_background_cell_gives_zeros() -> None:
    gen = torch.Generator().manual_seed(2)
    fmap = torch.randn(1, 8, 6, 6, generator=gen)
    masks = _masks(gen, 1, 4, 6, 6)
    masks[0, 1] = 0.0
    masks[0, 2] = 0.3
    got = masked_avg_pool(fmap, masks, num_background=4)
    torch.testing.assert_close(got, _loop_init(fmap, masks, is_object=False), rtol=1e-5, atol=1e-6)
    assert torch.equal(got[0, 1], torch.zeros(8)) and torch.equal(got[0, 2], torch.zeros(8))


def test_background_and_objects_in_one_call() -> None:
    """Leading rows are background cells (zeros when empty), the rest objects (arg-max when empty)."""
    gen = torch.Generator().manual_seed(3)
    fmap = torch.randn(2, 8, 5, 6, generator=gen)
    bg = _masks(gen, 2, 3, 5, 6)
    fg = _masks(gen, 2, 4, 5, 6)
    bg[0, 0] = 0.0
    bg[1, 2] = 0.2
    fg[0, 1] = 0.0
    fg[1, 3] = 0.49 * torch.rand(5, 6, generator=gen)
    got = masked_avg_pool(fmap, torch.cat((bg, fg), 1), num_background=3)
    want = torch.cat((_loop_init(fmap, bg, is_object=False), _loop_init(fmap, fg, is_object=True)), 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_keeps_the_feature_dtype() -> None:
    fmap = torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)
    masks = torch.rand(1, 2, 3, 3, dtype=torch.bfloat16)
    assert masked_avg_pool(fmap, masks, num_background=1).dtype == torch.bfloat16
