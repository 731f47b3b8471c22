"""A batch of sessions (BatchSession) against the same videos run alone: one call per stage and group,
videos joining and leaving, padding, limits, whole clips, and no host sync in the steady state."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hodor.engine import BatchSession, VideoClip
from hodor.engine.loop.session import TinyObjectWarning, VideoSession
from hodor.errors import HodorError
from tests.engine_fake_backend import FakeBackend
from tests.test_engine_host_sync import (
    NO_CUDA,
    HostTransfers,
    Unwatched,
    _FunctionRecorder,
    _OpRecorder,
    cuda_backend,
)

WINDOW = 3


def clip(n: int, height: int = 60, width: int = 90, shift: int = 0) -> list[np.ndarray]:
    """Coloured boxes drifting over a gradient; ``shift`` moves them, so clips differ."""
    frames = []
    for t in range(n):
        f = np.full((height, width, 3), 40, np.uint8)
        f[..., 2] = np.linspace(0, 120, width)[None].astype(np.uint8)
        x = 5 + shift + 3 * t
        f[10:30, x : x + 20] = (250, 30, 30)
        f[35:55, max(0, 60 - shift - 2 * t) : 80 - shift - 2 * t] = (30, 250, 30)
        f[2:14, 60:80] = (250, 250, 40)
        frames.append(f)
    return frames


def boxes(height: int, width: int, spec: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    m = np.zeros((height, width), np.uint8)
    for object_id, (y0, y1, x0, x1) in spec.items():
        m[y0:y1, x0:x1] = object_id
    return m


# Three videos: a and b share a padded size (60x90 and 62x90 both pad to 64x96 at min_dim 64),
# c pads to another (96x64). Different objects, references and lengths.
VIDEOS = {
    "a": (clip(9), {0: boxes(60, 90, {1: (10, 30, 5, 25), 2: (35, 55, 60, 80)})}),
    "b": (
        clip(7, 62, 90, shift=6),
        {1: boxes(62, 90, {3: (10, 30, 11, 31)}), 4: boxes(62, 90, {5: (2, 14, 60, 80)})},
    ),
    "c": (clip(6, 90, 60), {2: boxes(90, 60, {1: (35, 55, 20, 40), 4: (60, 80, 5, 25), 6: (2, 14, 40, 58)})}),
}


def solo(backend, frames, masks) -> list[np.ndarray]:
    session = VideoSession(backend, temporal_window=WINDOW)
    return [session.step(f, masks.get(t)) for t, f in enumerate(frames)]


def same_masks(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    return len(got) == len(want) and all(np.array_equal(x, y) for x, y in zip(got, want, strict=True))


def batched(backend, videos, start=None) -> dict[str, list[np.ndarray]]:
    """Step ``videos`` together; video ``k`` joins at step ``start[k]`` and leaves after its last frame."""
    start = start or {}
    batch = BatchSession(backend, temporal_window=WINDOW)
    out: dict[str, list[np.ndarray]] = {k: [] for k in videos}
    step = 0
    while any(len(out[k]) < len(v[0]) for k, v in videos.items()):
        frames, masks = {}, {}
        for k, (video_frames, video_masks) in videos.items():
            t = len(out[k])
            if step < start.get(k, 0) or t >= len(video_frames):
                if k in batch and t >= len(video_frames):
                    batch.remove(k)
                continue
            if k not in batch:
                batch.add(k)
            frames[k] = video_frames[t]
            if t in video_masks:
                masks[k] = video_masks[t]
        for k, mask in batch.step(frames, masks).items():
            out[k].append(mask)
        step += 1
    return out


def test_each_video_gets_the_masks_it_gets_alone():
    alone = {k: solo(FakeBackend(), *v) for k, v in VIDEOS.items()}
    together = batched(FakeBackend(), VIDEOS, start={"b": 2})
    for k in VIDEOS:
        assert len(np.unique(alone[k][-1])) > 2, k  # objects are tracked: the comparison is not vacuous
        for t, (a, b) in enumerate(zip(alone[k], together[k], strict=True)):
            assert np.array_equal(a, b), f"video {k}, frame {t}: {(a == b).mean():.5f}"


def test_one_call_of_each_stage_per_group_of_padded_size():
    backend = FakeBackend()
    batch = BatchSession(backend, temporal_window=WINDOW)
    for k in VIDEOS:
        batch.add(k)
    first = {k: v[1][min(v[1])] for k, v in VIDEOS.items()}
    for t in range(5):
        frames = {k: v[0][t] for k, v in VIDEOS.items()}
        masks = first if t == 0 else {}
        before = len(backend.calls)
        batch.step(frames, masks)
        calls = [c for c in backend.calls[before:] if c[0] != "limits"]
        if t >= 1:  # every video has objects: steady state
            kinds = [c[0] for c in calls]
            assert kinds.count("backbone") == 2 and kinds.count("decode") == 2 and kinds.count("encode") == 2
            backbone = sorted(c[1][0] for c in calls if c[0] == "backbone")
            assert backbone == [1, 2]  # a and b in one call, c alone
            decode_streams = sorted(c[1][0] for c in calls if c[0] == "decode")
            assert decode_streams == [1, 2]


def test_padding_is_marked_invalid_in_decode_and_encode():
    backend = FakeBackend()
    videos = {"a": VIDEOS["a"], "c": (clip(6), {0: boxes(60, 90, {1: (35, 55, 20, 40)})})}
    batched(backend, videos, start={"c": 2})
    decodes = [c for c in backend.calls if c[0] == "decode" and c[1][0] == 2]
    assert decodes, "the two videos were never decoded together"
    # Step 3: a decodes frame 3 (2 objects, 4 slots), c decodes frame 1 (1 object, 2 slots).
    shape, fg_invalid, bg_invalid = decodes[0][1], decodes[0][2], decodes[0][3]
    assert shape == (2, 2, 4, 256)
    assert not fg_invalid[0, :, :3].any()  # a: its 2 objects, frames 0..2 encoded
    assert fg_invalid[1, 1].all()  # c's padding object: every slot invalid
    assert fg_invalid[1, 0].tolist() == [False, True, True, True]  # c: frame 0 only, then padding slots
    assert bg_invalid[1].all(1).tolist() == [False] * 9 and bg_invalid[1, :, 1:].all()
    encodes = [c for c in backend.calls if c[0] == "encode" and c[1][0] == 2]
    assert encodes and encodes[0][3].tolist() == [[False, False], [False, True]]


def test_videos_join_and_leave_between_steps_without_disturbing_the_others():
    backend = FakeBackend()
    batch = BatchSession(backend, temporal_window=WINDOW)
    frames_a, masks_a = VIDEOS["a"]
    frames_b, masks_b = VIDEOS["b"]
    batch.add("a")
    got_a = [batch.step({"a": frames_a[0]}, {"a": masks_a[0]})["a"]]
    batch.add("b")
    got_b = []
    for t in range(1, 6):
        masks = {"b": masks_b[t - 1]} if t - 1 in masks_b else {}
        out = batch.step({"a": frames_a[t], "b": frames_b[t - 1]}, masks)
        got_a.append(out["a"])
        got_b.append(out["b"])
    batch.remove("b")
    assert batch.names == ("a",)
    for t in range(6, 9):
        got_a.append(batch.step({"a": frames_a[t]})["a"])
    # b joins again under the same name: a new video, from its frame 0.
    batch.add("b")
    assert batch.video("b").frame_index == 0 and not batch.video("b").objects.has_objects
    again = batch.step({"b": frames_b[0]})["b"]
    assert not again.any()
    assert same_masks(got_a, solo(FakeBackend(), frames_a, masks_a))
    assert same_masks(got_b, solo(FakeBackend(), frames_b[:5], masks_b))


def test_a_video_may_skip_a_step():
    """A video with no frame in a step does not advance; its masks are still those it gets alone."""
    batch = BatchSession(FakeBackend(), temporal_window=WINDOW)
    frames_a, masks_a = VIDEOS["a"]
    frames_c, masks_c = clip(5), {0: boxes(60, 90, {1: (35, 55, 20, 40)})}
    batch.add("a")
    batch.add("c")
    got_a, got_c = [], []
    for step in range(8):
        frames = {"a": frames_a[len(got_a)]}
        if step % 2 == 0 and len(got_c) < 5:
            frames["c"] = frames_c[len(got_c)]
        masks = {}
        for k, video_masks, got in (("a", masks_a, got_a), ("c", masks_c, got_c)):
            if k in frames and len(got) in video_masks:
                masks[k] = video_masks[len(got)]
        out = batch.step(frames, masks)
        got_a.append(out["a"])
        if "c" in out:
            got_c.append(out["c"])
    assert batch.video("c").frame_index == 4 and batch.video("a").frame_index == 8
    for got, (frames, masks) in ((got_a, (frames_a, masks_a)), (got_c, (frames_c, masks_c))):
        assert same_masks(got, solo(FakeBackend(), frames[: len(got)], masks))


def test_run_drives_clips_of_different_lengths_and_each_leaves_at_its_end():
    batch = BatchSession(FakeBackend(), temporal_window=WINDOW)
    clips = {k: VideoClip(iter(frames), masks) for k, (frames, masks) in VIDEOS.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", TinyObjectWarning)
        steps = list(batch.run(clips))
    assert len(steps) == 9
    assert [sorted(s) for s in steps] == [["a", "b", "c"]] * 6 + [["a", "b"]] + [["a"]] * 2
    assert len(batch) == 0  # every clip left at its end
    for k, (frames, masks) in VIDEOS.items():
        assert same_masks([s[k] for s in steps if k in s], solo(FakeBackend(), frames, masks))


def test_run_reads_one_frame_of_each_clip_per_step():
    pulled = {"a": 0, "b": 0}

    def frames(k, n):
        for f in clip(n):
            pulled[k] += 1
            yield f

    masks = {0: boxes(60, 90, {1: (10, 30, 5, 25)})}
    batch = BatchSession(FakeBackend(), temporal_window=WINDOW)
    clips = {k: VideoClip(frames(k, 12), masks) for k in pulled}
    for t, _ in enumerate(batch.run(clips)):
        assert pulled == {"a": t + 1, "b": t + 1}
        assert all(len(batch.video(k).ring.frames) <= WINDOW + 1 for k in batch.names)


def test_limits_name_the_option_and_leave_every_video_where_it_was():
    backend = FakeBackend(max_streams=2)
    batch = BatchSession(backend, temporal_window=WINDOW)
    frames = {k: VIDEOS[k][0][0] for k in ("a", "b")}
    for k in frames:
        batch.add(k)
    batch.step(frames, {"a": VIDEOS["a"][1][0]})  # two videos of one padded size: allowed
    batch.add("x")
    frames = {"a": VIDEOS["a"][0][1], "b": VIDEOS["b"][0][1], "x": clip(1)[0]}
    with pytest.raises(HodorError, match="--max-streams"):
        batch.step(frames)
    assert [batch.video(k).frame_index for k in ("a", "b", "x")] == [1, 1, 0]
    # Another padded size is another call: three videos in two groups pass.
    frames["x"] = clip(1, 90, 60)[0]
    batch.remove("x")
    batch.add("x")
    batch.step(frames)
    assert [batch.video(k).frame_index for k in ("a", "b", "x")] == [2, 2, 1]


def test_bad_uses_are_clear_errors():
    batch = BatchSession(FakeBackend())
    batch.add("a")
    with pytest.raises(HodorError, match="already in the batch"):
        batch.add("a")
    with pytest.raises(HodorError, match="no video 'z'"):
        batch.step({"z": clip(1)[0]})
    with pytest.raises(HodorError, match="no video 'z'"):
        batch.remove("z")
    with pytest.raises(HodorError, match="mask is given for video 'b'"):
        batch.step({"a": clip(1)[0]}, {"b": np.ones((60, 90), np.uint8)})
    with pytest.raises(HodorError, match="temporal window"):
        BatchSession(FakeBackend(), temporal_window=0)
    with pytest.raises(HodorError, match=r"video 'a'.*frame 5.*only 2 frames"):
        list(BatchSession(FakeBackend()).run({"a": VideoClip(clip(2), {5: np.ones((60, 90), np.uint8)})}))


def test_the_steady_state_of_a_batch_moves_nothing_between_host_and_device():
    log = HostTransfers()
    batch = BatchSession(Unwatched(FakeBackend(), log), temporal_window=WINDOW)
    videos = {}
    for k, (frames, masks) in VIDEOS.items():
        videos[k] = ([torch.from_numpy(f) for f in clip(9, *frames[0].shape[:2])], masks)
    for k in videos:
        batch.add(k)
    last_reference = max(max(m) for _, m in videos.values())
    per_step = []
    with _FunctionRecorder(log), _OpRecorder(log):
        for t in range(9):
            before = len(log.calls)
            batch.step_device(
                {k: v[0][t] for k, v in videos.items()}, {k: v[1][t] for k, v in videos.items() if t in v[1]}
            )
            per_step.append(log.calls[before:])
    assert per_step[last_reference], "a step with a reference reads the mask: the recorder should see it"
    steady = per_step[last_reference + 1 :]
    assert steady and all(not calls for calls in steady), steady


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("network", ["stand-in", "torch-graphs", "torch-triton-graphs"])
def test_no_host_sync_in_the_steady_state_of_a_batch_on_cuda(network):
    """Three videos (two groups) on the GPU; after the warm-up (windows full, graphs captured) any call
    that makes the host wait for the device raises. Masks as each video's own session gives them."""
    from hodor.engine.backends.cuda_graphs import CudaGraphWarning

    warm_up, steps = 8, 12
    videos = {k: (clip(steps, *frames[0].shape[:2]), masks) for k, (frames, masks) in VIDEOS.items()}
    backend = cuda_backend(network)
    batch = BatchSession(backend, temporal_window=WINDOW)
    for k in videos:
        batch.add(k)
    on_gpu = {k: [torch.from_numpy(f).cuda() for f in frames] for k, (frames, _) in videos.items()}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in videos}

    def step(t: int) -> None:
        masks = {k: m[t] for k, (_, m) in videos.items() if t in m}
        for k, ids in batch.step_device({k: frames[t] for k, frames in on_gpu.items()}, masks).items():
            out[k].append(ids)

    with warnings.catch_warnings():
        warnings.simplefilter("error", CudaGraphWarning)
        for t in range(warm_up):
            step(t)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(warm_up, steps):
                step(t)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    if network != "stand-in":
        assert backend.graphs.failure is None and backend.graphs.stats.replays > 0
    for k, (frames, masks) in videos.items():
        alone = solo(cuda_backend(network), frames, masks)
        assert len(np.unique(alone[-1])) > 1, k
        for t, (got, want) in enumerate(zip(out[k], alone, strict=True)):
            got = got.cpu().numpy()
            agree = float((got == want).mean())
            assert agree == 1.0 if network == "stand-in" else agree >= 0.999, f"video {k}, frame {t}: {agree}"
