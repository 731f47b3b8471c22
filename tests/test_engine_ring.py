"""The descriptor ring and the object-id map."""

from __future__ import annotations

import pytest
import torch

from hodor.engine.loop.objects import ObjectMap
from hodor.engine.loop.ring import DescriptorRing
from hodor.errors import HodorError

C = 256
QB = 9


def desc(value: float, n: int = 1) -> torch.Tensor:
    return torch.full((n, C), float(value))


def test_history_length_grows_to_window_plus_one():
    ring = DescriptorRing(window=3, num_bg=QB)
    for t in range(8):
        ring.put_objects(t, [1], desc(t))
        ring.put_background(t, desc(t, QB))
        h = ring.history(t + 1)
        assert h.length == min(t + 1, 3) + 1
        assert h.fg.shape == (1, 1, h.length, C)
        assert h.bg.shape == (1, QB, h.length, C)
        assert h.fg_invalid.shape == (1, 1, h.length) and h.bg_invalid.shape == (1, QB, h.length)


def test_capacity_is_window_plus_one_and_old_frames_are_forgotten():
    ring = DescriptorRing(window=2, num_bg=QB)
    assert ring.capacity == 3
    for t in range(20):
        ring.history(t)
        ring.put_objects(t, [1, 2], desc(t, 2))
        ring.put_background(t, desc(t, QB))
        assert len(ring.frames) <= ring.capacity
    assert ring.frames == [17, 18, 19]
    h = ring.history(20)
    # Window 18..20: frame 20 not written yet.
    assert h.fg[0, 0, :, 0].tolist() == [18.0, 19.0, 0.0]
    assert h.fg_invalid[0].tolist() == [[False, False, True], [False, False, True]]
    assert h.bg_invalid[0, :, 2].all() and not h.bg_invalid[0, :, :2].any()


def test_object_joining_late_is_invalid_before_it_joins():
    ring = DescriptorRing(window=4, num_bg=QB)
    ring.put_objects(0, [3], desc(1))
    ring.put_background(0, desc(1, QB))
    ring.put_objects(1, [3], desc(2))
    ring.put_background(1, desc(2, QB))
    ring.put_objects(2, [1], desc(7))  # object 1 joins at frame 2 (reference only: no background there)
    h = ring.history(2)
    assert h.ids == (1, 3)  # ascending ids, not insertion order
    assert h.fg_invalid[0].tolist() == [[True, True, False], [False, False, True]]
    assert h.fg[0, 0, 2, 0] == 7 and h.fg[0, 0, :2].abs().sum() == 0  # zeros where invalid
    assert h.fg[0, 1, :2, 0].tolist() == [1.0, 2.0]
    assert h.bg_invalid[0, 0].tolist() == [False, False, True]
    assert h.bg[0, :, 2].abs().sum() == 0


def test_frames_before_any_object_are_empty_slots_in_the_window():
    ring = DescriptorRing(window=7, num_bg=QB)
    ring.put_objects(5, [2], desc(1))
    ring.put_background(5, desc(1, QB))
    h = ring.history(6)
    # The official window counts frames, whether or not they hold descriptors.
    assert h.length == 7
    assert h.fg_invalid[0, 0].tolist() == [True] * 5 + [False, True]


def test_overwrite_replaces_the_frames_descriptor():
    ring = DescriptorRing(window=2, num_bg=QB)
    ring.put_objects(0, [1], desc(1))
    ring.put_objects(0, [1, 2], desc(5, 2))
    h = ring.history(0)
    assert h.ids == (1, 2) and h.fg[0, :, 0, 0].tolist() == [5.0, 5.0]


def test_going_back_in_time_is_refused():
    ring = DescriptorRing(window=2, num_bg=QB)
    ring.history(5)
    with pytest.raises(ValueError):
        ring.put_objects(4, [1], desc(0))


def test_shape_checks():
    ring = DescriptorRing(window=2, num_bg=QB)
    with pytest.raises(ValueError):
        ring.put_objects(0, [1, 2], desc(0))
    with pytest.raises(ValueError):
        ring.put_background(0, desc(0, QB - 1))


def test_object_map_sorted_slots_and_memory_of_first_objects():
    objects = ObjectMap()
    assert not objects.has_objects
    assert objects.add([7, 2]) == [2, 7]
    assert objects.add([2, 5]) == [5]
    assert objects.ids == (2, 5, 7)
    assert [objects.slot(i) for i in (2, 5, 7)] == [0, 1, 2]
    assert 5 in objects and 3 not in objects and len(objects) == 3
    assert objects.has_objects
    with pytest.raises(HodorError, match="unknown object id 3"):
        objects.slot(3)
    with pytest.raises(HodorError, match="1..255"):
        objects.add([256])
    objects.clear()
    assert not objects.has_objects


# --------------------------------------------------------------------------- the device layout


class DictRing:
    """The ring's meaning, transcribed with a dict of frames and stacks built per read."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.fg: dict[int, dict[int, torch.Tensor]] = {}
        self.bg: dict[int, torch.Tensor] = {}

    def history(self, t: int):
        span = range(max(0, t - self.window), t + 1)
        ids = sorted({i for s in span for i in self.fg.get(s, {})})
        fg = torch.zeros(len(ids), len(span), C)
        fg_invalid = torch.ones(len(ids), len(span), dtype=torch.bool)
        bg = torch.zeros(QB, len(span), C)
        bg_invalid = torch.ones(QB, len(span), dtype=torch.bool)
        for k, s in enumerate(span):
            for r, i in enumerate(ids):
                if i in self.fg.get(s, {}):
                    fg[r, k], fg_invalid[r, k] = self.fg[s][i], False
            if s in self.bg:
                bg[:, k], bg_invalid[:, k] = self.bg[s], False
        return tuple(ids), fg[None], bg[None], fg_invalid[None], bg_invalid[None]


@pytest.mark.parametrize("window", [1, 2, 4])
def test_random_visits_match_the_dict_transcription(window):
    rng = torch.Generator().manual_seed(window)
    ring, reference = DescriptorRing(window=window, num_bg=QB), DictRing(window)
    t = 0
    for _ in range(60):
        t += int(torch.randint(1, 4, (1,), generator=rng)) if torch.rand(1, generator=rng) < 0.2 else 1
        if torch.rand(1, generator=rng) < 0.3:  # a reference: some objects, any order
            ids = torch.randperm(6, generator=rng)[: int(torch.randint(1, 4, (1,), generator=rng))] + 1
            d = torch.randn(len(ids), C, generator=rng)
            ring.put_objects(t, ids.tolist(), d)
            reference.fg.setdefault(t, {}).update(dict(zip(ids.tolist(), d, strict=True)))
        h = ring.history(t)
        ids, fg, bg, fg_invalid, bg_invalid = reference.history(t)
        assert h.ids == ids, f"frame {t}"
        for got, want in ((h.fg, fg), (h.bg, bg), (h.fg_invalid, fg_invalid), (h.bg_invalid, bg_invalid)):
            assert got.shape == want.shape and torch.equal(got, want), f"frame {t}"
            assert got.is_contiguous()
        if h.ids and torch.rand(1, generator=rng) < 0.8:  # re-encode every object, as the loop does
            d, b = torch.randn(len(h.ids), C, generator=rng), torch.randn(QB, C, generator=rng)
            ring.put_objects(t, h.ids, d)
            ring.put_background(t, b)
            reference.fg.setdefault(t, {}).update(dict(zip(h.ids, d, strict=True)))
            reference.bg[t] = b
        assert len(ring.frames) <= ring.capacity


def test_steady_state_writes_in_place_and_histories_are_fresh():
    ring = DescriptorRing(window=3, num_bg=QB)
    ring.put_objects(0, [2, 5], desc(0, 2))
    ring.put_background(0, desc(0, QB))
    storage = [t.data_ptr() for t in ring.storage]
    for t in range(1, 12):
        h = ring.history(t)
        assert h.fg[0, :, -2, 0].tolist() == [t - 1.0] * 2  # the previous frame, just before this one
        for tensor in (h.fg, h.bg, h.fg_invalid, h.bg_invalid):
            assert tensor.untyped_storage().data_ptr() not in storage  # a copy, not a view of the ring
        ring.put_objects(t, [2, 5], desc(t, 2))
        ring.put_background(t, desc(t, QB))
        assert [x.data_ptr() for x in ring.storage] == storage
    assert ring.storage[0].shape == (QB + 2, 4, C) and ring.storage[1].shape == (QB + 2, 4)


def test_an_object_without_descriptor_in_the_window_leaves_it():
    ring = DescriptorRing(window=2, num_bg=QB)
    ring.put_objects(0, [1, 3], desc(1, 2))
    for t in range(1, 4):
        ring.put_objects(t, [3], desc(t))
        assert ring.history(t).ids == ((1, 3) if t <= 2 else (3,))
    assert ring.ids == (3,) and ring.storage[0].shape[0] == QB + 1
    ring.put_objects(4, [1], desc(9))  # and comes back as a new row
    h = ring.history(4)
    assert h.ids == (1, 3) and h.fg_invalid[0, 0].tolist() == [True, True, False]
