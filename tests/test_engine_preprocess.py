"""Pre-processing sizes, normalisation, padding, reference masks and the runtime's mask operations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hodor.config import parse_config
from hodor.engine.loop.masks import background_grid, id_mask_from_maps, override_with_references, resample
from hodor.engine.loop.preprocess import frame_geometry, normalise_frames, reference_masks


def test_geometry_of_the_parity_fixture():
    g = frame_geometry(300, 500, 256, 494)
    assert g.resized == (256, 427) and g.padded == (256, 448)
    assert g.at_stride(4) == (64, 112) and g.at_stride(8) == (32, 56)


def test_geometry_uses_pythons_round_half_to_even():
    # scale = 100/200 = 0.5: 0.5 * 201 = 100.5 -> 100 (half to even), 0.5 * 203 = 101.5 -> 102
    g = frame_geometry(200, 201, 100, 1000)
    assert g.resized == (100, 100)
    g = frame_geometry(200, 203, 100, 1000)
    assert g.resized == (100, 102)


def test_geometry_max_dim_limits_the_long_side():
    g = frame_geometry(480, 1920, 480, 864)  # short side to 480 would make the long side 1920
    assert g.resized == (216, 864)
    assert g.padded == (224, 864)
    portrait = frame_geometry(1920, 480, 480, 864)
    assert portrait.resized == (864, 216) and portrait.padded == (864, 224)


def test_normalise_frames_matches_the_official_recipe():
    cfg = parse_config({}).input  # unit scale, RGB input, ImageNet statistics (BGR order)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    g = frame_geometry(30, 50, 40, 1000)
    out = normalise_frames(torch.from_numpy(frame)[None], g, cfg)
    assert out.shape == (1, 3, 64, 96) and out.dtype == torch.float32

    bgr = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)[None].float()
    x = F.interpolate(bgr, g.resized, mode="bilinear", align_corners=False) / 255.0
    x = (x - torch.tensor(cfg.mean_bgr)[None, :, None, None]) / torch.tensor(cfg.std_bgr)[None, :, None, None]
    x = x.flip(1)
    assert torch.equal(out[:, :, : g.resized_height, : g.resized_width], x)
    assert out[:, :, g.resized_height :].abs().sum() == 0 and out[:, :, :, g.resized_width :].abs().sum() == 0


def test_normalise_frames_without_unit_scale_or_rgb_flip():
    cfg = parse_config(
        {
            "INPUT": {
                "NORMALIZE_TO_UNIT_SCALE": False,
                "RGB_INPUT": False,
                "IMAGE_MEAN": [1.0, 2.0, 3.0],
                "IMAGE_STD": [2.0, 4.0, 8.0],
            }
        }
    ).input
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # R, G, B
    out = normalise_frames(torch.from_numpy(frame)[None], frame_geometry(32, 32, 32, 32), cfg)
    # BGR order kept: channel 0 is blue.
    assert out[0, :, 0, 0].tolist() == [(30 - 1) / 2, (20 - 2) / 4, (10 - 3) / 8]


def test_reference_masks_resize_each_object_and_threshold():
    ids = torch.zeros(30, 50, dtype=torch.uint8)
    ids[5:15, 10:30] = 3
    ids[20:30, 0:5] = 1
    g = frame_geometry(30, 50, 40, 1000)
    masks = reference_masks(ids, [1, 3], g)
    assert masks.shape == (2, 64, 96) and masks.dtype == torch.bool
    for k, i in enumerate([1, 3]):
        expect = F.interpolate(
            (ids == i).float()[None, None], g.resized, mode="bilinear", align_corners=False
        )
        assert torch.equal(masks[k, : g.resized_height, : g.resized_width], expect[0, 0] > 0.5)
    assert not masks[:, g.resized_height :].any() and not masks[:, :, g.resized_width :].any()


@pytest.mark.parametrize("hw", [(256, 448), (64, 96), (480, 864), (32, 32)])
def test_size_based_resampling_equals_the_official_scale_factor_form(hw):
    x = torch.randn(1, 5, hw[0] // 4, hw[1] // 4)
    up = F.interpolate(
        x, scale_factor=4.0, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )
    assert torch.equal(resample(x, hw), up)
    y = torch.randn(1, 5, *hw)
    down = F.interpolate(
        y, scale_factor=1 / 8, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )
    assert torch.equal(resample(y, (hw[0] // 8, hw[1] // 8)), down)


def test_background_grid_remainder_goes_to_last_row_and_column():
    grid = background_grid(3, 3, 32, 56)
    assert grid.shape == (9, 32, 56)
    assert torch.equal(grid.sum(0), torch.ones(32, 56))  # a partition
    # cells are 10 x 18; the last row/column take 12 and 20
    assert grid[0].sum() == 10 * 18 and grid[8].sum() == 12 * 20
    assert grid[0, :10, :18].all() and grid[2, :10, 36:].all() and grid[6, 20:, :18].all()
    assert background_grid(1, 1, 4, 4).sum() == 16
    assert background_grid(3, 4, 24, 32).shape == (12, 24, 32)


def test_override_zeroes_everything_under_the_reference_then_sets_the_object():
    maps = torch.rand(1 + 2 + 3, 4, 4)
    ref = torch.zeros(4, 4, dtype=torch.bool)
    ref[1:3, 1:3] = True
    out = override_with_references(maps, 3, [(1, ref)])
    assert torch.equal(out[4], ref.float())
    other = [0, 1, 2, 3, 5]
    assert out[other][:, ref].abs().sum() == 0
    assert torch.equal(out[other][:, ~ref], maps[other][:, ~ref])
    assert torch.equal(maps, maps.clone())  # input untouched


def test_id_mask_maps_background_channels_to_zero():
    maps = torch.zeros(1 + 2 + 2, 1, 4)
    maps[0, 0, 0] = 1  # catch-all
    maps[2, 0, 1] = 1  # background
    maps[3, 0, 2] = 1  # object slot 0
    maps[4, 0, 3] = 1  # object slot 1
    assert id_mask_from_maps(maps, 3, [5, 9])[0].tolist() == [0, 0, 5, 9]
    assert id_mask_from_maps(maps, 3, [5, 9]).dtype == torch.uint8


@pytest.mark.parametrize("channels", [1, 2, 14])
def test_channel_argmax_is_argmax_ties_included(channels):
    """The CPU's per-channel pass gives ``argmax(0)``'s indices, the first channel on ties."""
    from hodor.engine.loop.masks import channel_argmax

    g = torch.Generator().manual_seed(channels)
    coarse = torch.randint(0, 4, (channels, 37, 53), generator=g).float() / 4  # many exact ties
    fine = torch.rand(channels, 37, 53, generator=g)
    hidden = fine.clone()
    hidden[channels // 2] = -1.0  # a channel taken out, as the output path does for annotated objects
    zeros = torch.zeros(channels, 5, 7)
    zeros[-1] = -0.0
    for maps in (coarse, fine, hidden, zeros):
        got = channel_argmax(maps)
        assert got.dtype == torch.int64 and torch.equal(got, maps.argmax(0))
