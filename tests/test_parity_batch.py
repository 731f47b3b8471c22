"""Parity fixture case-a segmented in a batch with other videos (torch backend, CPU): its masks pass
the fixture's rule as when it runs alone (tests/test_parity_torch.py), and the other videos' masks
are those they get alone.

The others are chosen to make the batch uneven: a mirrored copy of the clip (same padded size,
so batched with case-a in every call) joining later with one object, hence fewer objects and a
shorter history than case-a; and a crop (another padded size, its own group) joining later still.
"Those they get alone" is held to the rule for ``run`` against ``step`` (>= 99.9 % of pixels per
frame): batched stage calls differ from separate ones in the last bits (tests/test_engine_batch_
stages.py), which could flip a pixel whose two best objects tie. The agreement seen is printed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hodor.config import config_beside
from hodor.engine import BatchSession, ConfigOverrides, VideoSession
from hodor.engine.backends.torch_backend import open_torch_backend
from hodor.engine.io import write_mask
from hodor.engine.io.masks import default_palette
from tests.parity_fixture import CASE_A as CASE
from tests.parity_fixture import parity_check

MIRROR_JOINS, CROP_JOINS = 2, 3  # the step at which each joins
MIRROR_FRAMES, CROP_FRAMES = 4, 3
CROP = (slice(40, 240), slice(100, 400))  # 200x300: pads to 256x384 at MIN_DIM 256, case-a to 256x448


@pytest.fixture(scope="module")
def backend(parity_checkpoint):
    settings = json.loads((CASE / "expected" / "settings.json").read_text())
    cfg = ConfigOverrides(min_dim=settings["min_dim"]).apply(config_beside(parity_checkpoint))
    return open_torch_backend(parity_checkpoint, cfg, "cpu")


def case_a() -> tuple[list[str], list[np.ndarray], dict[int, np.ndarray], int]:
    settings = json.loads((CASE / "expected" / "settings.json").read_text())
    video = CASE / "video" / "JPEGImages" / "synth"
    stems = sorted(p.stem for p in video.iterdir())
    frames = [np.asarray(Image.open(video / f"{s}.png").convert("RGB")) for s in stems]
    masks = {
        int(t): np.asarray(Image.open(CASE / "video" / "Annotations" / "synth" / f"{int(t):05d}.png"))
        for t in settings["refs"]
    }
    return stems, frames, masks, settings["temporal_window"]


def test_case_a_in_a_batch_passes_parity_and_the_others_match_their_solo_runs(backend, tmp_path, capsys):
    stems, frames, masks, window = case_a()
    first = masks[0]
    videos = {
        "case-a": (frames, masks),
        # Mirrored, one object (id 2), joining at step 2.
        "mirror": (
            [f[:, ::-1].copy() for f in frames[:MIRROR_FRAMES]],
            {0: np.where(first == 2, first, 0)[:, ::-1].copy()},
        ),
        # Cropped: another padded size, both objects that the crop holds, joining at step 3.
        "crop": ([f[CROP].copy() for f in frames[:CROP_FRAMES]], {0: first[CROP].copy()}),
    }
    joins = {"case-a": 0, "mirror": MIRROR_JOINS, "crop": CROP_JOINS}
    assert len(np.unique(videos["crop"][1][0])) > 1

    batch = BatchSession(backend, temporal_window=window)
    got: dict[str, list[np.ndarray]] = {k: [] for k in videos}
    shared_calls = 0
    for step in range(len(frames)):
        step_frames, step_masks = {}, {}
        for k, (clip, clip_masks) in videos.items():
            t = step - joins[k]
            if t == 0:
                batch.add(k)
            if 0 <= t < len(clip):
                step_frames[k] = clip[t]
                if t in clip_masks:
                    step_masks[k] = clip_masks[t]
            elif t == len(clip):
                batch.remove(k)
        shared_calls += "case-a" in step_frames and "mirror" in step_frames
        for k, ids in batch.step(step_frames, step_masks).items():
            got[k].append(ids)
    assert shared_calls == MIRROR_FRAMES

    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    for stem, ids in zip(stems, got["case-a"], strict=True):
        write_mask(out / "masks" / f"{stem}.png", ids, default_palette())
    report, failures = parity_check(CASE, out)
    lines = list(report)
    for k in ("mirror", "crop"):
        clip, clip_masks = videos[k]
        session = VideoSession(backend, temporal_window=window)
        alone = [session.step(f, clip_masks.get(t)) for t, f in enumerate(clip)]
        assert len(np.unique(alone[-1])) > 1, f"{k}: nothing tracked, the comparison would be vacuous"
        agreement = [float((a == b).mean()) for a, b in zip(alone, got[k], strict=True)]
        lines.append(f"{k} batched vs alone: " + ", ".join(f"{a:.5%}" for a in agreement))
        assert min(agreement) >= 0.999, f"{k}: {agreement}"
    with capsys.disabled():
        print("\n" + "\n".join(f"  {line}" for line in lines))
    assert not failures, f"case-a frames below the parity rule in a batch: {failures}"
