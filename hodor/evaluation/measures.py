"""The DAVIS measures of one object in one frame, and their statistics over a sequence.

J (region similarity) is the intersection over union of the predicted and true masks. F
(contour accuracy) is the F-measure of their boundaries: a boundary pixel of one mask counts
as matched when a boundary pixel of the other lies within a disk of ``ceil(0.008 x image
diagonal)`` pixels. Pixels marked void in the ground truth take part in neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BOUNDARY_TOLERANCE_FRACTION = 0.008
"""Boundary tolerance as a fraction of the image diagonal (DAVIS 2017)."""
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of one object: ``pred [H,W]``, ``gt [H,W]``, ``void [H,W]`` bool. Two empty masks agree (1)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of ``mask [H,W]`` -> ``[H,W]`` bool, one pixel wide.

    A pixel is on the boundary when it differs from its right, lower or lower-right
    neighbour: the boundary lies half a pixel towards the origin from the segment's edge,
    as in the Berkeley segmentation benchmark that DAVIS follows. In the last row only the
    right neighbour counts, in the last column only the lower one, and the corner pixel never.
    """
    m = mask.astype(bool)
    right = np.zeros_like(m)
    below = np.zeros_like(m)
    diagonal = np.zeros_like(m)
    right[:, :-1] = m[:, 1:]
    below[:-1, :] = m[1:, :]
    diagonal[:-1, :-1] = m[1:, 1:]
    edges = (m ^ right) | (m ^ below) | (m ^ diagonal)
    edges[-1, :] = m[-1, :] ^ right[-1, :]
    edges[:, -1] = m[:, -1] ^ below[:, -1]
    edges[-1, -1] = False
    return edges


def boundary_tolerance(height: int, width: int) -> int:
    """Radius in pixels of the boundary-matching disk for a ``height x width`` image."""
    return math.ceil(BOUNDARY_TOLERANCE_FRACTION * math.hypot(height, width))


def _disk(radius: int) -> np.ndarray:
    """``[2r+1, 2r+1]`` bool: the pixels within ``radius`` of the centre (x^2 + y^2 <= r^2)."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _near(boundary: np.ndarray, disk: np.ndarray) -> np.ndarray:
    """``boundary [H,W]`` dilated by ``disk``, computed only around the boundary's bounding box."""
    out = np.zeros_like(boundary)
    rows, cols = np.nonzero(boundary)
    if rows.size == 0:
        return out
    r = disk.shape[0] // 2
    y0, y1 = max(rows.min() - r, 0), min(rows.max() + r + 1, boundary.shape[0])
    x0, x1 = max(cols.min() - r, 0), min(cols.max() + r + 1, boundary.shape[1])
    out[y0:y1, x0:x1] = ndimage.binary_dilation(boundary[y0:y1, x0:x1], structure=disk)
    return out


def boundary_f_measure(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, tolerance: int | None = None
) -> float:
    """F of one object: ``pred [H,W]``, ``gt [H,W]``, ``void [H,W]`` bool; ``tolerance`` in pixels
    (default :func:`boundary_tolerance` of the image). Two masks without boundary agree (1)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    if tolerance is None:
        tolerance = boundary_tolerance(*gt.shape)
    pred_boundary, gt_boundary = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pred_boundary), np.count_nonzero(gt_boundary)
    if n_pred == 0 or n_gt == 0:
        # Nothing to match on one side: precision and recall are 1 on an empty side, 0 on the other.
        return 1.0 if n_pred == n_gt else 0.0
    disk = _disk(tolerance)
    precision = np.count_nonzero(pred_boundary & _near(gt_boundary, disk)) / n_pred
    recall = np.count_nonzero(gt_boundary & _near(pred_boundary, disk)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Statistics:
    """One measure of one object over a sequence's evaluated frames.

    ``mean``; ``recall``: the fraction of frames above 0.5; ``decay``: the mean over the
    first quarter of the frames minus the mean over the last quarter (the quarters share
    their boundary frames, as in the DAVIS toolkit).
    """

    mean: float
    recall: float
    decay: float


def statistics(values: np.ndarray) -> Statistics:
    """Mean, recall and decay of ``values [T]`` (one object's per-frame J or F, T >= 1)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values: a sequence needs at least one evaluated frame")
    # Bin edges at round(linspace(1, T, 5)) - 1; bin i runs from edge i to edge i+1 inclusive.
    edges = (np.round(np.linspace(1, values.size, DECAY_BINS + 1) + 1e-10) - 1).astype(int)
    bins = [values[edges[i] : edges[i + 1] + 1] for i in range(DECAY_BINS)]
    return Statistics(
        mean=float(values.mean()),
        recall=float((values > RECALL_THRESHOLD).mean()),
        decay=float(bins[0].mean() - bins[-1].mean()),
    )
