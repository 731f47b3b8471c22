"""The stage seam's batch contract, per backend: one ``encode`` or ``decode`` call over B videos with
different object counts and history lengths (padded, padding marked invalid) gives what B separate
calls give.

Relative error as in :func:`hodor.accuracy.relative_error` (``max |batched - alone| / max |alone|``
over finite entries; non-finite entries must match). Tolerances by dtype: fp32 2e-6 on the
descriptors and 3e-5 on the logits; fp16 graphs 2e-3. The results are not bit-identical: the
padded attentions reduce over more keys (the padding's weights are exactly 0, but a longer sum is
blocked differently), and convolutions and matrix products over a batch of B pick other blocking
than over a batch of 1. Either way the difference is rounding: each fp32 result is itself within
about 1e-5 (logits) and 1e-6 (descriptors) of the same computation in float64 (measured on these
inputs), so two fp32 results may differ by twice that; measured batched-vs-alone differences were
up to 1.3e-5 on the logits and 9e-7 on the descriptors.

Padding entries hold random values, not zeros, so that a backend that read them would fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hodor.accuracy import relative_error
from hodor.config import config_beside
from hodor.engine.backends.torch_backend import TorchBackend
from hodor.model import load_hodor
from tests.test_export_shared import shared_export, shared_network

CPU = torch.device("cpu")
NUM_BG = 9
C = 256
COUNTS = (1, 3, 2)  # objects of each video in the batch
LENGTHS = (1, 4, 2)  # history slots of each video
TOLERANCE = {"fp32": (2e-6, 3e-5), "fp16": (2e-3, 2e-3)}  # (descriptors, logits)


@dataclass(frozen=True)
class Video:
    """One video's stage inputs at one frame, unpadded (batch axis of 1)."""

    f4: torch.Tensor
    f8: torch.Tensor
    fg_masks: torch.Tensor
    bg_masks: torch.Tensor
    fg_hist: torch.Tensor
    bg_hist: torch.Tensor
    fg_invalid: torch.Tensor
    bg_invalid: torch.Tensor


def videos(h: int, w: int, seed: int) -> list[Video]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for objects, length in zip(COUNTS, LENGTHS, strict=True):
        fg_invalid = torch.rand(1, objects, length, generator=g) < 0.3
        fg_invalid[..., 0] = False  # every object keeps a descriptor, as in the loop
        out.append(
            Video(
                f4=torch.randn(1, C, 2 * h, 2 * w, generator=g),
                f8=torch.randn(1, C, h, w, generator=g),
                fg_masks=torch.rand(1, objects, h, w, generator=g),
                bg_masks=torch.rand(1, NUM_BG, h, w, generator=g),
                fg_hist=torch.randn(1, objects, length, C, generator=g),
                bg_hist=torch.randn(1, NUM_BG, length, C, generator=g),
                fg_invalid=fg_invalid,
                bg_invalid=torch.zeros(1, NUM_BG, length, dtype=torch.bool),
            )
        )
    return out


def padded(items: list[Video], seed: int) -> dict[str, torch.Tensor]:
    """The batch: every video padded to the largest object count and history, padding random and
    marked invalid."""
    g = torch.Generator().manual_seed(seed)
    b, i, t = len(items), max(COUNTS), max(LENGTHS)
    h, w = items[0].f8.shape[-2:]
    batch = {
        "f4": torch.cat([v.f4 for v in items]),
        "f8": torch.cat([v.f8 for v in items]),
        "fg_masks": torch.rand(b, i, h, w, generator=g),
        "bg_masks": torch.cat([v.bg_masks for v in items]),
        "fg_pad": torch.ones(b, i, dtype=torch.bool),
        "fg_hist": torch.randn(b, i, t, C, generator=g) * 10,
        "bg_hist": torch.randn(b, NUM_BG, t, C, generator=g) * 10,
        "fg_invalid": torch.ones(b, i, t, dtype=torch.bool),
        "bg_invalid": torch.ones(b, NUM_BG, t, dtype=torch.bool),
    }
    for k, v in enumerate(items):
        n, length = v.fg_hist.shape[1:3]
        batch["fg_masks"][k, :n] = v.fg_masks[0]
        batch["fg_pad"][k, :n] = False
        batch["fg_hist"][k, :n, :length] = v.fg_hist[0]
        batch["bg_hist"][k, :, :length] = v.bg_hist[0]
        batch["fg_invalid"][k, :n, :length] = v.fg_invalid[0]
        batch["bg_invalid"][k, :, :length] = v.bg_invalid[0]
    return batch


def check_batch_equals_separate_calls(backend, precision: str, h: int = 8, w: int = 12, seed: int = 0):
    items = videos(h, w, seed)
    x = padded(items, seed + 1)
    desc_tol, logit_tol = TOLERANCE[precision]
    fg_desc, bg_desc = backend.encode(x["f8"], x["fg_masks"], x["bg_masks"], x["fg_pad"])
    logits = backend.decode(x["f4"], x["f8"], x["fg_hist"], x["bg_hist"], x["fg_invalid"], x["bg_invalid"])
    assert fg_desc.shape == (3, max(COUNTS), C)
    assert logits.shape == (3, 1 + NUM_BG + max(COUNTS), 2 * h, 2 * w)
    for k, v in enumerate(items):
        n = v.fg_masks.shape[1]
        alone_fg, alone_bg = backend.encode(v.f8, v.fg_masks, v.bg_masks)
        alone = backend.decode(v.f4, v.f8, v.fg_hist, v.bg_hist, v.fg_invalid, v.bg_invalid)
        errors = (
            relative_error(fg_desc[k : k + 1, :n], alone_fg),
            relative_error(bg_desc[k : k + 1], alone_bg),
            relative_error(logits[k : k + 1, : 1 + NUM_BG + n], alone),
        )
        assert max(errors[:2]) <= desc_tol and errors[2] <= logit_tol, f"video {k} ({n} objects): {errors}"
        assert torch.isneginf(logits[k, 1 + NUM_BG + n :]).all()  # padding objects' channels


def test_torch_backend_on_the_cpu(parity_checkpoint):
    net = shared_network(parity_checkpoint)
    check_batch_equals_separate_calls(TorchBackend(net, config_beside(parity_checkpoint), CPU), "fp32")


def test_triton_kernels_in_the_interpreter(parity_checkpoint, interpreter):
    """The fused kernels (their batch axis) at a tiny size, in Triton's interpreter."""
    pytest.importorskip("triton", reason="the fused kernels need the triton package")
    cfg = config_beside(parity_checkpoint)
    backend = TorchBackend(load_hodor(parity_checkpoint, cfg, CPU).eval(), cfg, CPU, kernels="triton")
    check_batch_equals_separate_calls(backend, "fp32", h=4, w=6)


def test_openvino_graphs(tmp_path_factory, parity_checkpoint):
    pytest.importorskip("openvino")
    from hodor.engine.backends.openvino_backend import OpenVinoBackend

    exported = shared_export(tmp_path_factory, parity_checkpoint)
    backend = OpenVinoBackend(exported.directory, cache=False)
    check_batch_equals_separate_calls(backend, "fp32")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_graphs(tmp_path_factory, parity_checkpoint, precision):
    pytest.importorskip("onnxruntime")
    from hodor.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from hodor.errors import HodorError

    exported = shared_export(tmp_path_factory, parity_checkpoint)
    try:
        backend = OnnxRuntimeBackend(exported.directory, precision=precision)
    except HodorError as exc:  # the CPU provider may lack fp16 kernels (see test_export_graphs)
        pytest.skip(str(exc))
    check_batch_equals_separate_calls(backend, precision)
