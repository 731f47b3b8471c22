"""Swin pieces whose construction is shape-derived: windows, the shifted-window mask, the bias index."""

from __future__ import annotations

import pytest
import torch

from hodor.model.swin import (
    PatchMerging,
    SwinBlock,
    SwinStage,
    SwinTransformer,
    relative_position_index,
    round_up,
    shifted_window_mask,
    whole_windows,
    window_indices,
    window_merge,
    window_partition,
)


def test_round_up_is_the_remainder_formula():
    """The floor-division form the model pads with (kept for the exporter's sake) gives what the
    remainder form gives, for every size and multiple used."""
    for multiple in (2, 4, 7):
        for n in range(1, 200):
            assert round_up(n, multiple) == n + (multiple - n % multiple) % multiple


def _mask_by_slices(hp: int, wp: int, window: int, shift: int) -> torch.Tensor:
    """The original construction: label 3x3 regions by slice assignment, compare labels per window."""
    img = torch.zeros(1, hp, wp, 1)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    cnt = 0
    for hs in slices:
        for ws in slices:
            img[:, hs, ws, :] = cnt
            cnt += 1
    windows = window_partition(img, window).squeeze(-1)  # [nW, N]
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("hp,wp", [(7, 7), (7, 14), (14, 21), (28, 14), (35, 56)])
def test_shifted_window_mask_matches_slices(hp: int, wp: int) -> None:
    got = shifted_window_mask(hp, wp, 7, 3, like=torch.zeros(1))
    assert torch.equal(got, _mask_by_slices(hp, wp, 7, 3))


def test_shifted_window_mask_dtype() -> None:
    got = shifted_window_mask(14, 14, 7, 3, like=torch.zeros(1, dtype=torch.float16))
    assert got.dtype == torch.float16 and set(got.unique().tolist()) == {-100.0, 0.0}


def test_relative_position_index() -> None:
    idx = relative_position_index(7)
    assert idx.shape == (49, 49) and idx.dtype == torch.int64
    for a in range(49):
        for b in range(0, 49, 5):
            dy, dx = a // 7 - b // 7, a % 7 - b % 7
            assert idx[a, b] == (dy + 6) * 13 + (dx + 6)


def test_window_partition_round_trip() -> None:
    x = torch.randn(2, 14, 21, 5)
    windows = window_partition(x, 7)
    assert windows.shape == (2 * 2 * 3, 49, 5)
    assert torch.equal(windows[1].reshape(7, 7, 5), x[0, 0:7, 7:14])
    assert torch.equal(window_merge(windows, 7, 2, 14, 21), x)


@pytest.mark.parametrize("shift", [0, 3])
def test_block_crops_its_padding(shift: int) -> None:
    """A map that is not a whole number of windows keeps its size; padded tokens are dropped."""
    torch.manual_seed(0)
    block = SwinBlock(12, 3, shift=shift).eval()
    x = torch.randn(2, 9, 11, 12)
    mask = shifted_window_mask(14, 14, 7, 3, like=x)
    with torch.no_grad():
        y = block(x, mask)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_stage_keeps_reduced_precision() -> None:
    """The shifted-window mask follows the input's dtype: a bfloat16 stage stays bfloat16."""
    torch.manual_seed(1)
    stage = SwinStage(12, depth=2, num_heads=3, downsample=True).eval().to(torch.bfloat16)
    x = torch.randn(1, 9, 16, 12, dtype=torch.bfloat16)
    with torch.no_grad():
        out, down = stage(x)
    assert out.dtype == down.dtype == torch.bfloat16
    assert out.shape == x.shape and down.shape == (1, 5, 8, 24)
    assert torch.isfinite(out).all() and torch.isfinite(down).all()


@pytest.mark.parametrize("h,w", [(9, 11), (14, 21), (3, 5), (7, 16), (30, 54)])
@pytest.mark.parametrize("shift", [0, 3])
def test_window_indices_are_pad_roll_partition(h: int, w: int, shift: int) -> None:
    """Gathering by the indices is the padded, rolled partition; scattering back undoes it."""
    x = torch.randn(2, h, w, 4)
    win = 7
    hp, wp = whole_windows(h, win), whole_windows(w, win)
    padded = torch.nn.functional.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2)) if shift else padded
    want = window_partition(rolled, win)
    gather, scatter = window_indices(h, w, win, shift, x.device)
    rows = torch.cat([x.reshape(2, h * w, 4), torch.zeros(2, 1, 4)], 1)
    got = rows[:, gather].reshape(-1, win * win, 4)
    assert torch.equal(got, want)
    assert torch.equal(got.reshape(2, -1, 4)[:, scatter].reshape(2, h, w, 4), x)


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("h,w", [(9, 11), (5, 14), (7, 7)])
def test_projections_on_the_map_tokens_only_are_the_padded_ones(h: int, w: int, shift: int) -> None:
    """qkv and proj on the map's tokens only (the padding's qkv is the bias) against the block
    that projects every padded token: the same values, bit for bit."""
    torch.manual_seed(4)
    block = SwinBlock(12, 3, shift=shift).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(2, h, w, 12)
    win = 7
    mask = shifted_window_mask(whole_windows(h, win), whole_windows(w, win), win, 3, like=x)
    indices = window_indices(h, w, win, shift, x.device)
    with torch.no_grad():
        want = block(x, mask)
        gathered = block(x, mask, indices)
        got = block(x, mask, indices, project_map_tokens=True)
    assert torch.equal(gathered, want) and torch.equal(got, want)


def test_patch_merging_by_transposition_is_the_slices() -> None:
    torch.manual_seed(2)
    merge = PatchMerging(6).eval()
    for shape in [(2, 8, 10, 6), (1, 9, 7, 6)]:
        x = torch.randn(shape)
        with torch.no_grad():
            want = merge(x)
            merge.by_transposition = True
            got = merge(x)
            merge.by_transposition = False
        assert torch.equal(got, want)


@pytest.mark.parametrize("size", [(64, 96), (96, 160), (224, 320)])
def test_gathered_windows_give_the_same_features(size: tuple[int, int]) -> None:
    """The exporter's form of the network (gathers, one transposition) against the original's:
    every stage output bit for bit the same, at sizes that are and are not whole windows."""
    torch.manual_seed(3)
    swin = SwinTransformer().eval()
    for p in swin.parameters():
        p.data.normal_(0, 0.05)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        want = swin(images)
        swin.gather_windows(True)
        assert [stage.project_map_tokens for stage in swin.layers] == [False, False, True, True]
        got = swin(images)
        swin.gather_windows(False)
        again = swin(images)
    for g, w, a in zip(got, want, again, strict=True):
        assert torch.equal(g, w) and torch.equal(a, w)
    assert not any(stage.by_gathers or stage.project_map_tokens for stage in swin.layers)
