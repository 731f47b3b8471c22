"""The runtime tail's Triton kernels against the engine's torch path.

The reference is the runtime's own torch code (``hodor.engine.loop.masks``), composed as
``VideoSession`` composes it after each decode (transcribed below), and, at the end,
``VideoSession`` itself: its id masks and the soft masks it hands to the encoder. Id
masks must be identical; the encoder's soft masks agree to fp32 rounding (≤ 1e-6
absolute; they are probabilities). Everything runs in Triton's interpreter on the CPU,
or on CUDA where a GPU is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hodor.engine.loop.masks import background_grid, id_mask_from_maps, override_with_references, resample
from hodor.engine.loop.preprocess import FrameGeometry, frame_geometry, reference_masks
from hodor.engine.loop.session import VideoSession
from hodor.kernels.runtime_tail import (
    channel_flags,
    encoder_masks,
    id_table,
    output_id_mask,
    reference_override,
)
from tests.engine_fake_backend import FakeBackend
from tests.test_engine_session import moving_clip, scenario

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"
QB = 9
NB = 1 + QB  # catch-all + background channels
PROB_TOLERANCE = 1e-6


# ------------------------------------------------------------ the engine's torch path, as the loop runs it


def torch_output_path(logits, geometry, ids, overrides, reference_ids=(), user_mask=None):
    """``VideoSession._propagate``'s output path: logits ``[1,Q,h,w]`` -> ids ``[H,W]`` uint8."""
    nb = NB
    probs_out = torch.softmax(resample(logits, geometry.padded), 1)[0]
    probs_out = override_with_references(probs_out, nb, overrides)
    probs_out = probs_out[:, : geometry.resized_height, : geometry.resized_width]
    probs_out = resample(probs_out[None], geometry.size)[0]
    annotated = [nb + ids.index(i) for i in reference_ids if i in ids]
    if annotated:
        probs_out[annotated] = -1.0
    out = id_mask_from_maps(probs_out, nb, ids)
    if user_mask is not None:
        out = torch.where(user_mask > 0, user_mask, out)
    return out


def torch_internal_path(logits, geometry, grid_enc, overrides):
    """``VideoSession._propagate``'s internal path -> ``fg [1,I,h8,w8]``, ``bg [1,Qb,h8,w8]``."""
    probs = resample(torch.softmax(logits, 1), geometry.padded)[0]
    probs = override_with_references(probs, NB, overrides)
    probs = resample(probs[None], geometry.at_stride(8))[0]
    fg = probs[NB:]
    bg = grid_enc * (1.0 - fg.sum(0, keepdim=True))
    return fg[None], bg[None]


def kernel_output_path(logits, geometry, ids, overrides, reference_ids=(), user_mask=None):
    """The same through :func:`output_id_mask`, its inputs built as the loop would build them."""
    q = logits.shape[1]
    annotated = [NB + ids.index(i) for i in reference_ids if i in ids]
    return output_id_mask(
        logits,
        geometry.padded,
        geometry.resized,
        geometry.size,
        id_table(NB, ids, logits.device),
        reference_override(q, NB, overrides),
        channel_flags(q, annotated, logits.device) if annotated else None,
        user_mask,
    )


def kernel_internal_path(logits, geometry, grid_enc, overrides):
    override = reference_override(logits.shape[1], NB, overrides)
    return encoder_masks(logits, geometry.padded, NB, grid_enc, override)


# ------------------------------------------------------------------------------------------ inputs


def blob_logits(geometry: FrameGeometry, num_objects: int, seed: int, device="cpu") -> torch.Tensor:
    """``[1, NB+I, Hp/4, Wp/4]``: noise plus one bright blob per object and a few background regions,
    so that every channel wins somewhere."""
    g = torch.Generator().manual_seed(seed)
    h, w = geometry.at_stride(4)
    q = NB + num_objects
    logits = torch.randn(1, q, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for c in range(q):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([h, w])
        radius = 2.0 + 4.0 * torch.rand(1, generator=g)
        logits[0, c] += 6.0 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return logits.to(device)


def reference_frame(geometry: FrameGeometry, ids, seed: int, device="cpu"):
    """A user mask at the frame's size with overlapping boxes of ``ids`` (later ids drawn over
    earlier ones), and its padded per-object masks as the loop makes them."""
    g = torch.Generator().manual_seed(seed)
    fh, fw = geometry.size
    user = torch.zeros(fh, fw, dtype=torch.uint8)
    for object_id in ids:
        y0 = int(torch.randint(0, fh // 2, (1,), generator=g))
        x0 = int(torch.randint(0, fw // 2, (1,), generator=g))
        user[y0 : y0 + fh // 2, x0 : x0 + fw // 3] = object_id
    user = user.to(device)
    present = [i for i in ids if (user == i).any()]
    return user, present, reference_masks(user, present, geometry)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def kernels_runnable(monkeypatch):
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


# -------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("frame", "min_dim", "num_objects"),
    [
        ((90, 131), 64, 1),  # frame larger than the processing size: downsampled output
        ((45, 71), 64, 3),  # smaller: upsampled output
        ((64, 96), 64, 4),  # exactly the processing size
        ((50, 83), 64, 12),  # 22 channels: padded to 32
    ],
)
def test_without_references(kernels_runnable, frame, min_dim, num_objects):
    geometry = frame_geometry(*frame, min_dim, 2 * min_dim)
    ids = [3 * k + 2 for k in range(num_objects)]
    logits = blob_logits(geometry, num_objects, seed=num_objects, device=DEVICE)
    want = torch_output_path(logits, geometry, ids, [])
    got = kernel_output_path(logits, geometry, ids, [])
    assert got.dtype == torch.uint8 and got.shape == geometry.size
    assert torch.equal(got, want), f"{(got != want).sum().item()} pixels differ"
    assert set(torch.unique(got).tolist()) <= {0, *ids}

    grid = background_grid(3, 3, *geometry.at_stride(8), device=DEVICE)
    fg_want, bg_want = torch_internal_path(logits, geometry, grid, [])
    fg, bg = kernel_internal_path(logits, geometry, grid, [])
    assert fg.shape == fg_want.shape and bg.shape == bg_want.shape
    assert (fg - fg_want).abs().max().item() <= PROB_TOLERANCE
    assert (bg - bg_want).abs().max().item() <= PROB_TOLERANCE


@pytest.mark.parametrize("frame", [(70, 101), (45, 71)])
def test_reference_frame(kernels_runnable, frame):
    """References of objects 9 and 4, applied in that order, overlapping (and overlapping the
    padding); the user's mask with those, object 6 (annotated but not kept: hidden in the
    output, not overridden) and id 200 (not tracked); the user's mask on top."""
    geometry = frame_geometry(*frame, 64, 128)
    ids = [1, 4, 6, 9]
    logits = blob_logits(geometry, len(ids), seed=5, device=DEVICE)
    user, present, _ = reference_frame(geometry, [4, 9, 6, 200], seed=frame[0], device=DEVICE)
    hp, wp = geometry.padded
    first = torch.zeros(hp, wp, dtype=torch.bool, device=DEVICE)
    first[5 : hp // 2 + 7, 3 : wp // 2] = True
    second = torch.zeros(hp, wp, dtype=torch.bool, device=DEVICE)
    second[hp // 2 : hp, wp // 3 : wp] = True
    overrides = [(ids.index(9), first), (ids.index(4), second)]
    assert bool((first & second).any())

    want = torch_output_path(logits, geometry, ids, overrides, present, user)
    got = kernel_output_path(logits, geometry, ids, overrides, present, user)
    assert torch.equal(got, want), f"{(got != want).sum().item()} pixels differ"
    # Without the user's mask, the overridden probabilities themselves decide.
    want = torch_output_path(logits, geometry, ids, overrides)
    got = kernel_output_path(logits, geometry, ids, overrides)
    assert torch.equal(got, want), f"{(got != want).sum().item()} pixels differ"

    grid = background_grid(3, 3, *geometry.at_stride(8), device=DEVICE)
    fg_want, bg_want = torch_internal_path(logits, geometry, grid, overrides)
    fg, bg = kernel_internal_path(logits, geometry, grid, overrides)
    assert (fg - fg_want).abs().max().item() <= PROB_TOLERANCE
    assert (bg - bg_want).abs().max().item() <= PROB_TOLERANCE
    # The referenced objects' maps are exactly 0, 0.25, ..., 1 where their references decide.
    assert torch.equal(fg[0, ids.index(9)] * 4, (fg[0, ids.index(9)] * 4).round())


def test_ties_go_to_the_lower_channel(kernels_runnable):
    """Integer logits, several channels equal everywhere: the kernel's ties are exact and the
    lower channel wins, as in ``argmax``. Torch's CPU path rounds equal channels differently
    by an ulp here and there, so it is matched everywhere except at such near-ties."""
    geometry = frame_geometry(40, 72, 64, 128)
    ids = [5, 7, 8]
    g = torch.Generator().manual_seed(1)
    h, w = geometry.at_stride(4)
    logits = torch.randint(0, 3, (1, NB + 3, h, w), generator=g).float()
    logits[0, NB + 2] = logits[0, NB + 1]  # objects 7 and 8 tie everywhere: 8 never shows
    logits[0, NB] = logits[0, 2]  # object 5 ties with a background channel: 5 never shows
    logits = logits.to(DEVICE)
    got = kernel_output_path(logits, geometry, ids, [])
    assert (got == 7).any() and not (got == 8).any() and not (got == 5).any()

    want = torch_output_path(logits, geometry, ids, [])
    rh, rw = geometry.resized
    probs = torch.softmax(resample(logits, geometry.padded), 1)[:, :, :rh, :rw]
    top2 = resample(probs, geometry.size)[0].topk(2, dim=0).values
    near_tie = (top2[0] - top2[1]) <= 4 * torch.finfo(torch.float32).eps * top2[0]
    assert torch.equal(got[~near_tie], want[~near_tie])
    assert (~near_tie).sum() > got.numel() // 2


def test_rejects_what_does_not_fit(kernels_runnable):
    geometry = frame_geometry(64, 96, 64, 128)
    logits = blob_logits(geometry, 2, seed=0, device=DEVICE)
    ids = id_table(NB, [1, 2], DEVICE)
    with pytest.raises(ValueError, match="logits must be"):
        output_id_mask(logits[0], geometry.padded, geometry.resized, geometry.size, ids)
    with pytest.raises(TypeError, match="float32"):
        output_id_mask(logits.half(), geometry.padded, geometry.resized, geometry.size, ids)
    with pytest.raises(ValueError, match="ids must be"):
        output_id_mask(logits, geometry.padded, geometry.resized, geometry.size, ids[:-1])
    with pytest.raises(ValueError, match="sizes do not fit"):
        output_id_mask(logits, geometry.padded, (65, 96), geometry.size, ids)
    mask = torch.ones(geometry.padded, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="referenced once"):
        reference_override(12, NB, [(0, mask), (0, mask)])
    assert reference_override(12, NB, []) is None


def test_same_masks_as_the_video_session(kernels_runnable):
    """The loop itself (a stand-in network, objects joining late, re-annotation, a tiny object):
    after every decode, the kernels give the session's id mask and the soft masks it encodes."""
    backend = FakeBackend()  # the loop on the CPU; the kernels where they run (CUDA, else the interpreter)
    decoded: list[torch.Tensor] = []
    encoded: list[tuple[torch.Tensor, torch.Tensor]] = []
    decode, encode = backend.decode, backend.encode

    def recording_decode(*args):
        decoded.append(out := decode(*args))
        return out

    def recording_encode(f8, fg, bg, fg_invalid=None):
        encoded.append((fg.clone(), bg.clone()))
        return encode(f8, fg, bg, fg_invalid)

    backend.decode, backend.encode = recording_decode, recording_encode
    session = VideoSession(backend, temporal_window=3)
    masks = scenario()
    checked = 0
    for t, frame in enumerate(moving_clip()):
        before = len(decoded)
        mask = masks.get(t)
        out = session.step(frame, mask)
        if len(decoded) == before:
            continue
        geometry = session.geometry
        ids = list(session.objects.ids)
        logits = decoded[-1].to(DEVICE)
        overrides, present, user = [], [], None
        if mask is not None:
            user = torch.from_numpy(mask).to(DEVICE)
            present = [int(i) for i in np.unique(mask) if i != 0]
            padded = reference_masks(user, present, geometry)
            # The loop keeps a reference object when its 1/8 mask has a pixel > 0.5.
            small = resample(padded[None].float(), geometry.at_stride(8))[0]
            kept = [i for k, i in enumerate(present) if (small[k] > 0.5).any()]
            overrides = [(ids.index(i), padded[present.index(i)]) for i in kept]
        got = kernel_output_path(logits, geometry, ids, overrides, present, user)
        assert np.array_equal(got.cpu().numpy(), out), f"frame {t}: {(got.cpu().numpy() != out).sum()} pixels"
        fg_want, bg_want = encoded[-1]  # the re-encoding after this decode
        grid = background_grid(3, 3, *geometry.at_stride(8), device=DEVICE)
        fg, bg = kernel_internal_path(logits, geometry, grid, overrides)
        assert (fg.cpu() - fg_want).abs().max().item() <= PROB_TOLERANCE, f"frame {t}"
        assert (bg.cpu() - bg_want).abs().max().item() <= PROB_TOLERANCE, f"frame {t}"
        checked += 1
    assert checked == 11  # frames 3..13 decode; 5 and 8 carry references


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("num_objects", [1, 4, 16])
def test_cuda_480p(num_objects):
    """480p (854×480 processed at 480×864): every pixel's id, and the encoder's masks."""
    geometry = frame_geometry(480, 854, 480, 864)
    ids = list(range(1, num_objects + 1))
    logits = blob_logits(geometry, num_objects, seed=num_objects, device="cuda")
    user, present, padded = reference_frame(geometry, ids[:2], seed=3, device="cuda")
    overrides = [(ids.index(i), padded[k]) for k, i in enumerate(present)]
    for refs, ref_ids, um in (([], (), None), (overrides, present, user)):
        want = torch_output_path(logits, geometry, ids, refs, ref_ids, um)
        got = kernel_output_path(logits, geometry, ids, refs, ref_ids, um)
        differ = (got != want).sum().item()
        # Torch's and Triton's exp differ in the last bits: only a near-tie may flip.
        assert differ <= 5, f"{differ} pixels differ"
        grid = background_grid(3, 3, *geometry.at_stride(8), device="cuda")
        fg_want, bg_want = torch_internal_path(logits, geometry, grid, refs)
        fg, bg = kernel_internal_path(logits, geometry, grid, refs)
        assert (fg - fg_want).abs().max().item() <= PROB_TOLERANCE
        assert (bg - bg_want).abs().max().item() <= PROB_TOLERANCE
