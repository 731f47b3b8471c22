"""``masks_from_logits``, the computation between decode and re-encode, against a plain transcription of
the official steps (DESIGN.md, "The loop"), to the bit: any implementation of it must pass these."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hodor.engine.loop.masks import background_grid, id_lookup
from hodor.engine.loop.post_decode import DecodedMasks, FrameReferences, masks_from_logits
from hodor.engine.loop.preprocess import frame_geometry

QB = 9
NB = 1 + QB


def by_scale(x: torch.Tensor, s: float) -> torch.Tensor:
    return F.interpolate(
        x, scale_factor=s, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )


def official(logits, ids, geometry, refs, shown, user_mask):
    """The official post-decode, step by step: a fresh copy for every override, a lookup per frame."""

    def override(p):
        p = p.clone()
        for slot, m in refs:
            p = torch.where(m[None], torch.zeros_like(p), p)
            p[NB + slot] = m.float()
        return p

    out = override(torch.softmax(by_scale(logits, 4.0), 1)[0])
    out = out[None, :, : geometry.resized_height, : geometry.resized_width]
    out = F.interpolate(out, geometry.size, mode="bilinear", align_corners=False)[0]
    for slot in shown:
        out[NB + slot] = -1.0
    lut = torch.tensor([0] * NB + list(ids), dtype=torch.uint8)
    id_mask = lut[out.argmax(0)]
    if user_mask is not None:
        id_mask = torch.where(user_mask > 0, user_mask, id_mask)
    inner = by_scale(override(by_scale(torch.softmax(logits, 1), 4.0)[0])[None], 1 / 8)[0]
    fg = inner[NB:]
    bg = background_grid(3, 3, *geometry.at_stride(8)) * (1 - fg.sum(0, keepdim=True))
    return id_mask, fg, bg


def case(size: tuple[int, int], num_objects: int, seed: int):
    geometry = frame_geometry(*size, 64, 128)
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(1, NB + num_objects, *geometry.at_stride(4), generator=gen)
    ids = tuple(sorted(torch.randperm(255, generator=gen)[:num_objects].add(1).tolist()))
    return geometry, logits, ids, gen


def run(geometry, logits, ids, references=None) -> DecodedMasks:
    grid = background_grid(3, 3, *geometry.at_stride(8))
    return masks_from_logits(
        logits, NB, id_lookup(NB, ids, "cpu"), grid, geometry.resized, geometry.size, references
    )


@pytest.mark.parametrize(("size", "num_objects"), [((60, 90), 1), ((50, 77), 3), ((97, 61), 4)])
def test_steady_state_matches_the_official_steps(size, num_objects):
    geometry, logits, ids, _ = case(size, num_objects, seed=sum(size))
    before = logits.clone()
    got = run(geometry, logits, ids)
    id_mask, fg, bg = official(logits, ids, geometry, [], [], None)
    assert got.id_mask.shape == geometry.size and got.id_mask.dtype == torch.uint8
    assert got.fg.shape == (num_objects, *geometry.at_stride(8)) and got.fg.dtype == torch.float32
    assert got.bg.shape == (QB, *geometry.at_stride(8)) and got.fg.is_contiguous() and got.bg.is_contiguous()
    assert torch.equal(got.id_mask, id_mask) and torch.equal(got.fg, fg) and torch.equal(got.bg, bg)
    assert len(set(got.id_mask.unique().tolist())) > 1  # not a degenerate case
    assert torch.equal(logits, before)


def test_reference_frame_matches_the_official_steps():
    """Two overlapping override masks (order matters), one object shown as the user drew it."""
    geometry, logits, ids, gen = case((50, 77), 3, seed=7)
    hp, wp = geometry.padded
    masks = torch.zeros(2, hp, wp, dtype=torch.bool)
    masks[0, 5:30, 10:60] = True
    masks[1, 20:50, 40:90] = True
    user = torch.zeros(geometry.size, dtype=torch.uint8)
    user[10:20, 20:40] = ids[2]
    refs = [(2, masks[0]), (0, masks[1])]
    references = FrameReferences(
        override_slots=(2, 0), override_masks=masks, shown_slots=(2,), user_mask=user
    )
    got = run(geometry, logits, ids, references)
    id_mask, fg, bg = official(logits, ids, geometry, refs, [2], user)
    assert torch.equal(got.id_mask, id_mask) and torch.equal(got.fg, fg) and torch.equal(got.bg, bg)
    assert (got.id_mask == ids[2]).sum() == (user > 0).sum()  # shown exactly, nowhere else


def test_a_reference_without_kept_objects_still_shows_the_users_mask():
    geometry, logits, ids, _ = case((60, 90), 2, seed=3)
    user = torch.zeros(geometry.size, dtype=torch.uint8)
    user[0:3, 0:3] = 200  # a tiny object, dropped before encoding
    references = FrameReferences((), torch.zeros(0, *geometry.padded, dtype=torch.bool), (), user)
    got = run(geometry, logits, ids, references)
    id_mask, fg, bg = official(logits, ids, geometry, [], [], user)
    assert torch.equal(got.id_mask, id_mask) and torch.equal(got.fg, fg) and torch.equal(got.bg, bg)
    assert (got.id_mask == 200).sum() == 9
