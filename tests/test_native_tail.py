"""The CPU post-decode as one compiled pass (``hodor.engine.loop.native_tail``) against the torch one.

``native_masks_from_logits`` must give what ``masks_from_logits`` gives in the steady state: the
same id masks (only a tie to about an ulp may go the other way; none occurs in these cases), the
soft masks to re-encode to fp32 rounding. Frames with references, logits off the CPU,
``HODOR_NATIVE_TAIL=0`` and a machine where the library cannot be built take the torch path
itself, to the bit. The library is built here once (a few seconds) if the cache lacks it.
"""

from __future__ import annotations

import logging

import pytest
import torch

from hodor.engine.loop import native_tail
from hodor.engine.loop.masks import background_grid, id_lookup
from hodor.engine.loop.native_tail import native_masks_from_logits
from hodor.engine.loop.post_decode import FrameReferences, masks_from_logits
from hodor.engine.native_library import ExtensionUnavailable

PROB_TOLERANCE = 1e-6  # probabilities; fp32 rounding of the same formulas, exp within an ulp
NB = 10  # catch-all + 9 background maps


def _case(objects: int, padded, resized, frame, seed: int):
    g = torch.Generator().manual_seed(seed)
    hp, wp = padded
    logits = torch.randn(1, NB + objects, hp // 4, wp // 4, generator=g) * 3.0
    grid = background_grid(3, 3, hp // 8, wp // 8)
    ids = id_lookup(NB, [1 + (3 * i) % 250 for i in range(objects)], "cpu")
    return logits, NB, ids, grid, resized, frame


def _assert_close(want, got):
    assert got.id_mask.shape == want.id_mask.shape and got.id_mask.dtype == torch.uint8
    assert torch.equal(got.id_mask, want.id_mask), f"{(got.id_mask != want.id_mask).sum()} pixels differ"
    assert got.fg.shape == want.fg.shape and got.bg.shape == want.bg.shape
    assert got.fg.dtype == got.bg.dtype == torch.float32
    assert got.fg.is_contiguous() and got.bg.is_contiguous()
    assert (got.fg - want.fg).abs().max().item() <= PROB_TOLERANCE
    assert (got.bg - want.bg).abs().max().item() <= PROB_TOLERANCE


def _assert_same(want, got):
    assert torch.equal(got.id_mask, want.id_mask)
    assert torch.equal(got.fg, want.fg) and torch.equal(got.bg, want.bg)


@pytest.fixture(scope="module")
def built():
    if native_tail.library() is None:
        pytest.fail(f"the CPU post-decode could not be built here: {native_tail._unavailable}")
    return native_tail.library()


# (objects, padded, resized, frame, threads): 480p as the benchmarks run it; a frame larger and
# smaller than its resized part (up- and downsampling at the end, downsampling by more than two
# taking the one-value-at-a-time path); many channels (several lanes of 16); odd sizes; more
# threads than the frame has rows.
CASES = [
    (4, (480, 832), (468, 832), (480, 854), 2),
    (1, (32, 32), (20, 17), (20, 17), 1),
    (40, (96, 128), (90, 100), (50, 40), 3),
    (2, (256, 448), (256, 427), (64, 70), 2),
    (3, (64, 64), (64, 64), (7, 9), 5),
    (5, (64, 96), (60, 90), (600, 900), 2),
    (1, (32, 64), (32, 63), (1, 1), 4),
    (17, (128, 96), (100, 96), (333, 111), 2),
]


@pytest.mark.parametrize("pool", ["openmp", "own threads"])
@pytest.mark.parametrize(("objects", "padded", "resized", "frame", "threads"), CASES)
def test_steady_state_matches_the_torch_path(
    built, monkeypatch, pool, objects, padded, resized, frame, threads
):
    if pool == "own threads":
        monkeypatch.setattr(native_tail, "openmp_parallel", lambda: None)
    args = _case(objects, padded, resized, frame, seed=sum(padded) + objects)
    before = args[0].clone()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = native_masks_from_logits(*args)
    finally:
        torch.set_num_threads(previous)
    want = masks_from_logits(*args)
    if frame[0] * frame[1] > 100:
        assert len(want.id_mask.unique()) >= min(3, objects + 1)  # not a degenerate case
    _assert_close(want, got)
    assert torch.equal(args[0], before)  # the logits are left alone


def test_the_bands_run_on_pytorchs_openmp_threads():
    """Where PyTorch runs its CPU operations on OpenMP, the pass finds that runtime's entry point."""
    torch.ones(1000).sum()  # PyTorch's runtime is loaded by now
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch does not run its CPU operations on OpenMP")
    assert native_tail.openmp_parallel() is not None


def test_logits_in_another_memory_layout(built):
    logits, nb, ids, grid, resized, frame = _case(3, (64, 96), (60, 90), (60, 90), seed=3)
    strided = logits.contiguous(memory_format=torch.channels_last)
    assert not strided.is_contiguous()
    _assert_close(masks_from_logits(logits, nb, ids, grid, resized, frame),
                  native_masks_from_logits(strided, nb, ids, grid, resized, frame))  # fmt: skip


def test_frames_with_references_take_the_torch_path(built, monkeypatch):
    logits, nb, ids, grid, resized, frame = _case(3, (64, 96), (60, 90), (60, 90), seed=5)
    masks = torch.zeros(1, 64, 96, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True
    user = torch.zeros(frame, dtype=torch.uint8)
    user[5:9, 5:9] = ids[NB + 1]
    refs = FrameReferences((1,), masks, (1,), user)
    want = masks_from_logits(logits, nb, ids, grid, resized, frame, refs)
    monkeypatch.setattr(native_tail, "library", _must_not_load)
    got = native_masks_from_logits(logits, nb, ids, grid, resized, frame, refs)
    _assert_same(want, got)


def _must_not_load(*args, **kwargs):
    raise AssertionError("the compiled post-decode was asked for")


def test_the_opt_out_keeps_the_torch_path(monkeypatch):
    args = _case(2, (64, 64), (64, 60), (64, 60), seed=9)
    monkeypatch.setenv("HODOR_NATIVE_TAIL", "0")
    monkeypatch.setattr(native_tail, "library", _must_not_load)
    got, want = native_masks_from_logits(*args), masks_from_logits(*args)
    _assert_same(want, got)


def test_without_a_compiler_it_warns_once_and_keeps_the_torch_path(monkeypatch, caplog):
    def cannot(cache_root):
        raise ExtensionUnavailable("no C++ compiler found (set CXX, or install g++)")

    monkeypatch.setattr(native_tail, "_library", None)
    monkeypatch.setattr(native_tail, "_unavailable", None)
    monkeypatch.setattr(native_tail, "_load", cannot)
    args = _case(2, (64, 64), (64, 60), (64, 60), seed=11)
    with caplog.at_level(logging.WARNING, logger="hodor.engine.loop.native_tail"):
        got = native_masks_from_logits(*args)
        again = native_masks_from_logits(*args)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "runs in PyTorch" in said[0] and "no C++ compiler" in said[0]
    want = masks_from_logits(*args)
    _assert_same(want, got)
    _assert_same(want, again)


def test_mismatched_inputs_are_refused(built):
    logits, nb, ids, grid, resized, frame = _case(2, (64, 64), (64, 60), (64, 60), seed=1)
    with pytest.raises(ValueError, match="background grid"):
        native_masks_from_logits(logits, nb, ids, grid[:, :-1], resized, frame)
    with pytest.raises(ValueError, match="id table"):
        native_masks_from_logits(logits, nb, ids[:-1], grid, resized, frame)
    with pytest.raises(ValueError, match="sizes do not fit"):
        native_masks_from_logits(logits, nb, ids, grid, (65, 60), frame)
