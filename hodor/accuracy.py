"""Relative error: how every faster path is judged against its reference (kernels, exported
graphs, engines, CUDA graphs)::

    rel = max |out − ref| / max |ref|      (over the entries where ref is finite)

Non-finite entries (the −∞ logits of a descriptor with no valid history) must match exactly.
A reference that is all zeros is matched only exactly.

One convention for failures: a difference no tolerance can accept (other shapes, another
pattern of ±∞/NaN) is an *infinite* error, not an exception, so that each caller decides what
failing means (a test asserts; the exporter refuses the graph with its own message).
:func:`mismatch` says why an error is infinite.
"""

from __future__ import annotations

import math

import torch


def mismatch(out: torch.Tensor, ref: torch.Tensor) -> str | None:
    """Why ``out`` cannot be compared with ``ref`` within any tolerance, or None when it can."""
    if out.shape != ref.shape:
        return f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out, ref = out.double(), ref.double()
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(out)) or not torch.equal(out[~finite], ref[~finite]):
        bad = int((finite != torch.isfinite(out)).sum().item())
        return f"non-finite entries differ from the reference ({bad} positions)"
    return None


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|out − ref| / max|ref|`` over ``ref``'s finite entries, in float64; ``inf`` when
    :func:`mismatch` finds a difference (or ``ref`` is all zeros and ``out`` is not)."""
    if mismatch(out, ref) is not None:
        return math.inf
    out, ref = out.double(), ref.double()
    finite = torch.isfinite(ref)
    if not finite.any():
        return 0.0
    err = (out[finite] - ref[finite]).abs().max().item()
    scale = ref[finite].abs().max().item()
    if scale == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return err / scale
