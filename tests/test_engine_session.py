"""The per-video loop: against a whole-video transcription of the official loop, step against run,
objects joining late, re-annotation, tiny references, limits and bounded memory."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hodor.engine.loop.masks import background_grid
from hodor.engine.loop.preprocess import frame_geometry, normalise_frames, reference_masks
from hodor.engine.loop.session import CPU_CHUNK, DEFAULT_CHUNK, TinyObjectWarning, VideoSession, default_chunk
from hodor.errors import HodorError
from tests.engine_fake_backend import FakeBackend, small_config

H, W = 60, 90


def moving_clip(n: int = 14) -> list[np.ndarray]:
    """Three coloured boxes drifting over a gradient."""
    frames = []
    for t in range(n):
        f = np.full((H, W, 3), 40, np.uint8)
        f[..., 2] = np.linspace(0, 120, W)[None].astype(np.uint8)
        f[10:30, 5 + 3 * t : 25 + 3 * t] = (250, 30, 30)
        f[35:55, max(0, 60 - 2 * t) : 80 - 2 * t] = (30, 250, 30)
        f[2:14, 60:80] = (250, 250, 40)
        frames.append(f)
    return frames


def box_mask(boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for object_id, (y0, y1, x0, x1) in boxes.items():
        m[y0:y1, x0:x1] = object_id
    return m


def scenario() -> dict[int, np.ndarray]:
    """Object 1 at frame 2; object 4 (and a tiny object 9) at frame 5; object 1 re-annotated with a new
    object 7 at frame 8."""
    return {
        2: box_mask({1: (10, 30, 11, 31)}),
        5: box_mask({4: (35, 55, 50, 70), 9: (0, 2, 0, 2)}),
        8: box_mask({1: (10, 30, 29, 49), 7: (2, 14, 60, 80)}),
    }


# --------------------------------------------------------------------------- reference transcription


def official_loop(backend, frames, masks, window):
    """Whole-video transcription of the official loop with dict histories that are never trimmed.

    Returns the official outputs (reference frames as the official code shows them).
    """
    cfg = backend.config
    qb = cfg.model.num_bg_descriptors
    nb = 1 + qb
    g = frame_geometry(H, W, cfg.input.min_dim, cfg.input.max_dim)
    rows, cols = cfg.model.bg_grid
    fg_hist: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
    bg_hist: dict[int, torch.Tensor] = {}
    outputs = []

    def by_scale(x, s):
        return F.interpolate(
            x, scale_factor=s, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )

    def override(p, refs, ids):
        p = p.clone()
        for iid, m in refs.items():
            p = torch.where(m[None], torch.zeros_like(p), p)
            p[nb + ids.index(iid)] = m.float()
        return p

    for t, frame in enumerate(frames):
        known = {i for d in fg_hist.values() for i in d}
        if not known and t not in masks:
            outputs.append(np.zeros((H, W), np.uint8))
            continue
        f4, f8 = backend.backbone(normalise_frames(torch.from_numpy(frame)[None], g, cfg.input))
        refs = None
        if t in masks:
            user = torch.from_numpy(masks[t])
            ids = sorted(int(i) for i in user.unique() if i != 0)
            full = reference_masks(user, ids, g)
            grid = background_grid(rows, cols, *g.padded)
            grid = torch.where(torch.all(full < 0.5, 0)[None], grid, torch.zeros_like(grid))
            small = by_scale(torch.cat([grid, full.float()])[None], 1 / 8)
            valid = torch.any(small[0, qb:].flatten(1) > 0.5, 1)
            kept = [i for i, v in zip(ids, valid.tolist(), strict=True) if v]
            fg_d, bg_d = backend.encode(f8, small[:, qb:][:, valid], small[:, :qb])
            for i, d in zip(kept, fg_d[0], strict=True):
                fg_hist[t][i] = d
            if not known:
                bg_hist[t] = bg_d[0]
            refs = {i: m for i, m, v in zip(ids, full, valid.tolist(), strict=True) if v}
        if known:
            span = range(max(0, t - window), t + 1)
            ids = sorted({i for s in span for i in fg_hist[s]})
            zero = torch.zeros(256)
            fg = torch.stack([torch.stack([fg_hist[s].get(i, zero) for s in span]) for i in ids])[None]
            bg = torch.stack([bg_hist.get(s, torch.zeros(qb, 256)) for s in span], 1)[None]
            fg_inv = torch.tensor([[i not in fg_hist[s] for s in span] for i in ids])[None]
            bg_inv = torch.tensor([s not in bg_hist for s in span])[None, None].expand(1, qb, -1)
            logits = backend.decode(f4, f8, fg, bg, fg_inv, bg_inv)
            out = torch.softmax(by_scale(logits, 4.0), 1)[0]
            inner = by_scale(torch.softmax(logits, 1), 4.0)[0]
            if refs is not None:
                out, inner = override(out, refs, ids), override(inner, refs, ids)
            out = F.interpolate(
                out[None, :, : g.resized_height, : g.resized_width],
                (H, W),
                mode="bilinear",
                align_corners=False,
            )[0]
            lut = torch.tensor([0] * nb + ids, dtype=torch.uint8)
            outputs.append(lut[out.argmax(0)].numpy())
            inner = by_scale(inner[None], 1 / 8)
            fg_m = inner[:, nb:]
            bg_m = background_grid(rows, cols, *g.at_stride(8))[None] * (1 - fg_m.sum(1, keepdim=True))
            fg_d, bg_d = backend.encode(f8, fg_m, bg_m)
            bg_hist[t] = bg_d[0]
            for i, d in zip(ids, fg_d[0], strict=True):
                fg_hist[t][i] = d
        else:
            ids = list(refs)
            m = torch.stack([refs[i] for i in ids]).float()[None, :, : g.resized_height, : g.resized_width]
            m = F.interpolate(m, (H, W), mode="bilinear", align_corners=False)[0]
            m = torch.cat([torch.zeros(1, H, W), m])
            outputs.append(torch.tensor([0] + ids, dtype=torch.uint8)[m.argmax(0)].numpy())
    return outputs


def run_steps(session, frames, masks):
    return [session.step(f, masks.get(t)) for t, f in enumerate(frames)]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("window", [2, 7])
def test_step_follows_the_official_loop(window):
    frames, masks = moving_clip(), scenario()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinyObjectWarning)
        expected = official_loop(FakeBackend(), frames, masks, window)
        got = run_steps(VideoSession(FakeBackend(), temporal_window=window), frames, masks)
    assert [np.unique(e).tolist() for e in expected][-1] == [0, 1, 4, 7]  # the scenario is not degenerate
    for t, (e, o) in enumerate(zip(expected, got, strict=True)):
        assert o.shape == (H, W) and o.dtype == np.uint8
        if t not in masks:
            assert np.array_equal(o, e), f"frame {t}: {(o == e).mean():.5f}"
            continue
        user = masks[t]
        # Deliberate difference 1: the user's mask exactly for the objects it annotates ...
        assert np.array_equal(o[user > 0], user[user > 0]), f"frame {t}"
        # ... the prediction elsewhere, which only differs where the official shows an annotated object.
        annotated = np.isin(e, np.unique(user[user > 0]))
        keep = (user == 0) & ~annotated
        assert np.array_equal(o[keep], e[keep]), f"frame {t}"
        assert (o == e).mean() > 0.98


def test_frames_before_the_first_reference_are_zero_at_the_original_size():
    backend = FakeBackend()
    session = VideoSession(backend)
    frames, masks = moving_clip(4), {2: box_mask({1: (10, 30, 11, 31)})}
    out = run_steps(session, frames, masks)
    assert [o.shape for o in out] == [(H, W)] * 4
    assert not out[0].any() and not out[1].any()
    assert len([c for c in backend.calls if c[0] == "backbone"]) == 2  # no work before the first reference
    assert np.array_equal(out[2], masks[2])  # first reference: the user's mask exactly


def test_run_gives_the_same_masks_as_step():
    frames, masks = moving_clip(), scenario()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinyObjectWarning)
        stepped = run_steps(VideoSession(FakeBackend(), temporal_window=3), frames, masks)
        ran = list(VideoSession(FakeBackend(), temporal_window=3, chunk=4).run(frames, masks))
    assert len(ran) == len(stepped)
    for t, (a, b) in enumerate(zip(stepped, ran, strict=True)):
        assert (a == b).mean() >= 0.999, f"frame {t}"


def test_run_reads_frames_lazily_and_memory_stays_bounded():
    backend = FakeBackend()
    session = VideoSession(backend, temporal_window=2, chunk=4)
    clip = moving_clip(30)
    pulled = 0

    def frames():
        nonlocal pulled
        for f in clip:
            pulled += 1
            yield f

    masks = {0: box_mask({1: (10, 30, 5, 25)})}
    for t, _ in enumerate(session.run(frames(), masks)):
        assert pulled <= t + 4  # at most one chunk ahead of the output
        assert len(session.ring.frames) <= 3
    batches = [c[1][0] for c in backend.calls if c[0] == "backbone"]
    assert max(batches) == 4 and sum(batches) == 30


def test_objects_joining_late_get_history_slots_from_their_reference_on():
    backend = FakeBackend()
    session = VideoSession(backend, temporal_window=7)
    frames, masks = moving_clip(7), {0: box_mask({1: (10, 30, 5, 25)}), 4: box_mask({4: (35, 55, 52, 72)})}
    run_steps(session, frames, masks)
    decodes = [c for c in backend.calls if c[0] == "decode"]
    assert [d[1] for d in decodes] == [
        (1, 1, 2, 256),
        (1, 1, 3, 256),
        (1, 1, 4, 256),
        (1, 2, 5, 256),
        (1, 2, 6, 256),
        (1, 2, 7, 256),
    ]
    fg_invalid, bg_invalid = decodes[3][2][0], decodes[3][3][0]  # frame 4: object 4 joins
    assert fg_invalid[0].tolist() == [False, False, False, False, True]  # object 1: frame 4 not encoded yet
    assert fg_invalid[1].tolist() == [True, True, True, True, False]  # object 4: only its reference
    assert bg_invalid[0].tolist() == [False, False, False, False, True]
    assert session.objects.ids == (1, 4)


def test_background_from_a_later_reference_is_not_stored():
    backend = FakeBackend()
    session = VideoSession(backend, temporal_window=7)
    masks = {0: box_mask({1: (10, 30, 5, 25)}), 1: box_mask({4: (35, 55, 58, 78)})}
    run_steps(session, moving_clip(3), masks)
    decodes = [c for c in backend.calls if c[0] == "decode"]
    # Frame 1's background comes from re-encoding only (so it is invalid while decoding frame 1).
    assert decodes[0][3][0, 0].tolist() == [False, True]
    assert decodes[1][3][0, 0].tolist() == [False, False, True]


def test_reannotating_a_known_object_overrides_its_prediction():
    frames = moving_clip(6)
    masks = {0: box_mask({1: (10, 30, 5, 25)}), 3: box_mask({1: (40, 50, 0, 10)})}  # deliberately elsewhere
    backend = FakeBackend()
    out = run_steps(VideoSession(backend, temporal_window=7), frames, masks)
    assert np.array_equal(out[3] == 1, masks[3] == 1)
    enc = [c for c in backend.calls if c[0] == "encode"]
    assert enc[0][1][1] == 1 and enc[3][1][1] == 1  # the re-annotation encodes object 1 alone ...
    assert [d[1][1] for d in backend.calls if d[0] == "decode"] == [1] * 5  # ... and it stays one object


def test_tiny_reference_object_is_dropped_with_a_warning_naming_it():
    masks = {0: box_mask({1: (10, 30, 5, 25), 6: (0, 2, 0, 2)})}
    session = VideoSession(FakeBackend())
    with pytest.warns(TinyObjectWarning, match=r"\[6\]"):
        out = list(session.run(moving_clip(3), masks))
    assert session.objects.ids == (1,)
    assert np.array_equal(out[0], masks[0])  # the frame shows what the user gave
    assert 6 not in out[1]


def test_first_reference_with_only_tiny_objects_is_a_clear_error():
    session = VideoSession(FakeBackend())
    with pytest.raises(HodorError, match=r"\[2, 3\].*too small"):
        list(session.run(moving_clip(3), {1: box_mask({2: (0, 2, 0, 2), 3: (50, 52, 80, 83)})}))


def test_limits_are_checked_before_encode_and_decode():
    backend = FakeBackend(limits=(1, 99))
    masks = {0: box_mask({1: (10, 30, 5, 25), 2: (35, 55, 60, 80)})}
    with pytest.raises(HodorError, match="limit"):
        list(VideoSession(backend).run(moving_clip(2), masks))
    assert not [c for c in backend.calls if c[0] == "encode"]

    backend = FakeBackend(limits=(9, 3))
    with pytest.raises(HodorError, match="limit"):
        list(
            VideoSession(backend, temporal_window=7).run(moving_clip(6), {0: box_mask({1: (10, 30, 5, 25)})})
        )
    history = [c[2] for c in backend.calls if c[0] == "limits"]
    assert max(history) == 4  # the call that asked for 4 frames was refused before decoding
    assert [c[1][2] for c in backend.calls if c[0] == "decode"] == [2, 3]


def test_the_default_chunk_follows_the_device():
    """A whole-clip run batches the backbone over 16 frames on a GPU, one on the CPU (where a batch
    is slower per frame and holds the first mask back); an explicit chunk wins."""
    assert default_chunk("cuda") == default_chunk(torch.device("cuda", 0)) == DEFAULT_CHUNK == 16
    assert default_chunk("cpu") == CPU_CHUNK == 1
    backend = FakeBackend()
    assert VideoSession(backend).chunk == CPU_CHUNK
    assert VideoSession(backend, chunk=5).chunk == 5
    list(VideoSession(backend).run(moving_clip(5), {0: box_mask({1: (10, 30, 5, 25)})}))
    assert [c[1][0] for c in backend.calls if c[0] == "backbone"] == [1] * 5
    with pytest.raises(HodorError, match="chunk must be >= 1"):
        VideoSession(backend, chunk=0)


def test_bad_inputs_to_the_api():
    session = VideoSession(FakeBackend())
    with pytest.raises(HodorError, match="no object"):
        session.step(moving_clip(1)[0], np.zeros((H, W), np.uint8))
    session.reset()
    with pytest.raises(HodorError, match="45x30.*90x60"):
        session.step(moving_clip(1)[0], np.ones((30, 45), np.uint8))
    session.reset()
    session.step(moving_clip(1)[0])
    with pytest.raises(HodorError, match="frame 1 is 45x30"):
        session.step(np.zeros((30, 45, 3), np.uint8))
    with pytest.raises(HodorError, match="only 2 frames"):
        list(VideoSession(FakeBackend()).run(moving_clip(2), {5: box_mask({1: (0, 9, 0, 9)})}))
    with pytest.raises(HodorError, match="temporal window"):
        VideoSession(FakeBackend(), temporal_window=0)


def test_step_and_run_with_the_torch_model():
    """The real network (random weights, one encoder and decoder layer) through the torch backend."""
    from hodor.engine.backends.torch_backend import TorchBackend
    from hodor.model import HodorNet

    cfg = small_config(min_dim=64, max_dim=96)
    cfg = type(cfg)(
        input=cfg.input,
        model=type(cfg.model)(**{**cfg.model.__dict__, "encoder_layers": 1, "decoder_layers": 1}),
    )
    torch.manual_seed(0)
    backend = TorchBackend(HodorNet(cfg.model), cfg, torch.device("cpu"))
    frames = moving_clip(6)
    masks = {0: box_mask({1: (10, 30, 5, 25), 2: (35, 55, 60, 80)}), 3: box_mask({3: (2, 14, 60, 80)})}
    stepped = run_steps(VideoSession(backend, temporal_window=2), frames, masks)
    ran = list(VideoSession(backend, temporal_window=2, chunk=4).run(frames, masks))
    for t, (a, b) in enumerate(zip(stepped, ran, strict=True)):
        assert (a == b).mean() >= 0.999, f"frame {t}: {(a == b).mean():.5f}"
    assert np.array_equal(ran[3][masks[3] > 0], masks[3][masks[3] > 0])
