"""The Triton runtime tail wired into the loop (``post_decode_for``), against the torch post-decode.

``fused_masks_from_logits`` must give what ``masks_from_logits`` gives: the same id masks (the
official steps' ids, see ``test_engine_post_decode.py``), the soft masks to re-encode to fp32
rounding. Then the loop itself with either tail: the same masks from a session, a batch of
sessions, and ``hodor-run`` on the parity fixture (which must still pass the parity rule).
Everything runs in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hodor.engine import cli
from hodor.engine.loop import post_decode
from hodor.engine.loop.batch import BatchSession
from hodor.engine.loop.masks import background_grid, id_lookup
from hodor.engine.loop.native_tail import native_masks_from_logits
from hodor.engine.loop.post_decode import (
    FrameReferences,
    fused_masks_from_logits,
    masks_from_logits,
    post_decode_for,
)
from hodor.engine.loop.session import VideoSession
from tests.engine_fake_backend import FakeBackend
from tests.parity_fixture import parity_check, parity_run_args
from tests.test_engine_post_decode import NB, case
from tests.test_engine_session import moving_clip, scenario

pytest.importorskip("triton", reason="the Triton runtime tail needs the triton package")

PROB_TOLERANCE = 1e-6  # the soft masks are probabilities; fp32 rounding of the same formulas


def both(geometry, logits, ids, references=None):
    grid = background_grid(3, 3, *geometry.at_stride(8))
    args = (logits, NB, id_lookup(NB, ids, "cpu"), grid, geometry.resized, geometry.size, references)
    return masks_from_logits(*args), fused_masks_from_logits(*args)


def assert_same(want, got):
    assert torch.equal(got.id_mask, want.id_mask), f"{(got.id_mask != want.id_mask).sum()} pixels differ"
    assert got.fg.shape == want.fg.shape and got.bg.shape == want.bg.shape
    assert got.fg.is_contiguous() and got.bg.is_contiguous()
    assert (got.fg - want.fg).abs().max().item() <= PROB_TOLERANCE
    assert (got.bg - want.bg).abs().max().item() <= PROB_TOLERANCE


@pytest.mark.parametrize(("size", "num_objects"), [((60, 90), 1), ((50, 77), 3), ((97, 61), 4)])
def test_steady_state(interpreter, size, num_objects):
    geometry, logits, ids, _ = case(size, num_objects, seed=sum(size))
    want, got = both(geometry, logits, ids)
    assert len(want.id_mask.unique()) > 1
    assert_same(want, got)


def test_reference_frame(interpreter):
    """Two overlapping overrides (the later wins), one object shown as drawn, the user's mask on top."""
    geometry, logits, ids, _ = case((50, 77), 3, seed=7)
    hp, wp = geometry.padded
    masks = torch.zeros(2, hp, wp, dtype=torch.bool)
    masks[0, 5:30, 10:60] = True
    masks[1, 20:50, 40:90] = True
    user = torch.zeros(geometry.size, dtype=torch.uint8)
    user[10:20, 20:40] = ids[2]
    want, got = both(geometry, logits, ids, FrameReferences((2, 0), masks, (2,), user))
    assert_same(want, got)
    # A reference whose objects were all too small to keep: only the user's mask applies.
    user = torch.zeros(geometry.size, dtype=torch.uint8)
    user[0:3, 0:3] = 200
    empty = FrameReferences((), torch.zeros(0, hp, wp, dtype=torch.bool), (), user)
    want, got = both(geometry, logits, ids, empty)
    assert_same(want, got)
    assert (got.id_mask == 200).sum() == 9


def test_backends_choose_their_tail():
    assert post_decode_for(FakeBackend()) is native_masks_from_logits  # no runtime_tail, on the CPU
    assert post_decode_for(FakeBackend(device=torch.device("cuda"))) is masks_from_logits  # elsewhere: torch
    backend = FakeBackend()
    backend.runtime_tail = "torch"
    assert post_decode_for(backend) is masks_from_logits
    backend.runtime_tail = "triton"
    assert post_decode_for(backend) is fused_masks_from_logits
    backend.runtime_tail = "cuda-magic"
    with pytest.raises(ValueError, match="unknown runtime tail 'cuda-magic'"):
        post_decode_for(backend)


def test_torch_backend_on_the_cpu_takes_the_compiled_tail(parity_checkpoint):
    from hodor.engine.backends.registry import open_backend

    backend = open_backend(parity_checkpoint, "torch", "cpu")
    assert backend.runtime_tail == "native"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_torch_backend_on_cuda_takes_the_triton_tail_with_the_triton_kernels(parity_checkpoint):
    from hodor.engine.backends.registry import open_backend
    from hodor.engine.backends.torch_backend import TorchOptions

    fused = open_backend(parity_checkpoint, "torch", "cuda", torch_options=TorchOptions(kernels="triton"))
    plain = open_backend(parity_checkpoint, "torch", "cuda", torch_options=TorchOptions(kernels="torch"))
    assert fused.runtime_tail == "triton" and plain.runtime_tail == "torch"


def tailed(name: str) -> FakeBackend:
    backend = FakeBackend()
    backend.runtime_tail = name
    return backend


def test_a_session_gives_the_same_masks_with_either_tail(interpreter, monkeypatch):
    """Objects joining late, a re-annotation, a tiny object dropped before encoding."""
    calls = []

    def counted(*args):
        calls.append(args[-1] is not None)  # whether the frame carries references
        return fused_masks_from_logits(*args)

    monkeypatch.setitem(post_decode.RUNTIME_TAILS, "triton", counted)
    masks = scenario()
    outs = {}
    for name in ("torch", "triton"):
        session = VideoSession(tailed(name), temporal_window=3)
        outs[name] = [session.step(frame, masks.get(t)) for t, frame in enumerate(moving_clip())]
    for t, (a, b) in enumerate(zip(outs["torch"], outs["triton"], strict=True)):
        assert np.array_equal(a, b), f"frame {t}: {(a != b).sum()} pixels differ"
    assert len(np.unique(outs["torch"][-1])) >= 3  # the objects are still there at the end
    assert len(calls) == 11 and sum(calls) == 2  # every decode went through the kernels; frames 5 and 8 refer


def test_a_batch_gives_the_same_masks_with_either_tail(interpreter):
    masks = scenario()
    frames = moving_clip()
    outs = {}
    for name in ("torch", "triton"):
        batch = BatchSession(tailed(name), temporal_window=3)
        batch.add("a")
        batch.add("b")
        got = {"a": [], "b": []}
        for t, frame in enumerate(frames):
            step_masks = {"a": masks[t]} if t in masks else {}
            if t == 0:
                step_masks["b"] = masks[2]  # b starts with the first object at its frame 0
            out = batch.step({"a": frame, "b": frames[-1 - t]}, masks=step_masks or None)
            for key, ids in out.items():
                got[key].append(np.asarray(ids))
        outs[name] = got
    for key in ("a", "b"):
        for t, (x, y) in enumerate(zip(outs["torch"][key], outs["triton"][key], strict=True)):
            assert np.array_equal(x, y), f"video {key} frame {t}: {(x != y).sum()} pixels differ"


def test_hodor_run_with_the_triton_tail_passes_the_parity_rule(
    interpreter, parity_case, parity_checkpoint, tmp_path, capsys, monkeypatch
):
    opened = []

    def with_triton_tail(*args, **kwargs):
        backend = open_backend(*args, **kwargs)
        backend.runtime_tail = "triton"
        opened.append(backend)
        return backend

    open_backend = cli.open_backend
    monkeypatch.setattr(cli, "open_backend", with_triton_tail)
    out = tmp_path / "out"
    code = cli.main(
        parity_run_args(parity_case, out)
        + ["--model", str(parity_checkpoint), "--backend", "torch", "--device", "cpu"]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    assert opened and opened[0].runtime_tail == "triton"
    report, failures = parity_check(parity_case, out)
    with capsys.disabled():
        print("\n" + "\n".join(f"  {line}" for line in report))
    assert not failures, f"frames below the parity rule: {failures}"
