"""J&F of predicted masks against ground truth, by the DAVIS 2017 semi-supervised protocol.

Ground truth and predictions are directories of ``<sequence>/<frame>.png`` id masks
(palette or greyscale PNGs, pixel value = object id). For each sequence:

- the frames are the ground truth's, in name order; the first and the last are not evaluated
  (the first is the given reference, the last is left out by the protocol);
- the objects are those of the first ground-truth frame (DAVIS numbers them 1..N); a
  predicted id that is not one of them is ignored, an object never predicted scores 0;
- pixels of value 255 in the ground truth are void: they count for neither J nor F.

Each object gets the mean, recall and decay of J and of F over the evaluated frames; the
global figures average them over every object of every sequence, and J&F is the mean of
mean J and mean F.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hodor.engine.io.masks import read_mask
from hodor.errors import HodorError
from hodor.evaluation.measures import (
    Statistics,
    boundary_f_measure,
    boundary_tolerance,
    region_similarity,
    statistics,
)

VOID_ID = 255
MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectScores:
    """One object of one sequence: J and F per evaluated frame (``[T]`` each) and their statistics."""

    sequence: str
    object_id: int
    j_frames: tuple[float, ...]
    f_frames: tuple[float, ...]
    j: Statistics
    f: Statistics

    @property
    def jf_mean(self) -> float:
        return (self.j.mean + self.f.mean) / 2

    def row(self) -> dict[str, float]:
        """The measures of :data:`MEASURES`, by name."""
        values = (self.jf_mean, self.j.mean, self.j.recall, self.j.decay, self.f.mean, self.f.recall)
        return dict(zip(MEASURES, (*values, self.f.decay), strict=True))


@dataclass(frozen=True)
class Evaluation:
    """Every evaluated object, in sequence order then id order, and the global figures."""

    objects: tuple[ObjectScores, ...]

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.sequence for o in self.objects))

    def global_figures(self) -> dict[str, float]:
        """The :data:`MEASURES` averaged over all objects; ``J&F-Mean`` = (J-Mean + F-Mean) / 2."""
        rows = [o.row() for o in self.objects]
        figures = {m: float(np.mean([r[m] for r in rows])) for m in MEASURES[1:]}
        return {"J&F-Mean": (figures["J-Mean"] + figures["F-Mean"]) / 2, **figures}


def sequence_directories(root: Path) -> list[str]:
    """Names of the sequence directories in ``root`` (hidden ones, e.g. staging, are not sequences)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _mask_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))


def evaluate_sequence(name: str, gt_dir: Path, pred_dir: Path) -> list[ObjectScores]:
    """Score the objects of one sequence (``gt_dir/*.png`` against ``pred_dir/<same name>``)."""
    gt_files = _mask_files(gt_dir)
    if len(gt_files) < 3:
        raise HodorError(
            f"{gt_dir}: {len(gt_files)} ground-truth masks; the protocol leaves out the first and the last "
            "frame, so a sequence needs at least 3"
        )
    if not pred_dir.is_dir():
        raise HodorError(f"no predictions for sequence {name}: {pred_dir} is not a directory")
    first = read_mask(gt_files[0]).ids
    object_ids = sorted(int(i) for i in np.unique(first) if i not in (0, VOID_ID))
    if not object_ids:
        raise HodorError(f"{gt_files[0]}: the first ground-truth mask of {name} has no object")
    j = {i: [] for i in object_ids}
    f = {i: [] for i in object_ids}
    tolerance = boundary_tolerance(*first.shape)
    for gt_file in gt_files[1:-1]:
        gt = read_mask(gt_file).ids
        pred_file = pred_dir / gt_file.name
        if not pred_file.is_file():
            raise HodorError(f"missing prediction {pred_file} (sequence {name}, frame {gt_file.stem})")
        pred = read_mask(pred_file).ids
        if pred.shape != gt.shape:
            raise HodorError(
                f"{pred_file} is {pred.shape[1]}x{pred.shape[0]}, but its ground truth "
                f"{gt_file} is {gt.shape[1]}x{gt.shape[0]}"
            )
        void = gt == VOID_ID
        for i in object_ids:
            j[i].append(region_similarity(pred == i, gt == i, void))
            f[i].append(boundary_f_measure(pred == i, gt == i, void, tolerance))
    return [
        ObjectScores(
            sequence=name,
            object_id=i,
            j_frames=tuple(j[i]),
            f_frames=tuple(f[i]),
            j=statistics(np.array(j[i])),
            f=statistics(np.array(f[i])),
        )
        for i in object_ids
    ]


def _evaluate_job(job: tuple[str, Path, Path]) -> list[ObjectScores]:
    return evaluate_sequence(*job)


def evaluate(
    pred_root: Path, gt_root: Path, sequences: Sequence[str], workers: int = 1, progress: bool = True
) -> Evaluation:
    """Score ``sequences`` (``gt_root/<seq>`` against ``pred_root/<seq>``) on ``workers`` processes."""
    if not sequences:
        raise HodorError(f"no sequence to evaluate in {gt_root}")
    missing = [s for s in sequences if not (pred_root / s).is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise HodorError(f"{pred_root} has no predictions for {len(missing)} sequence(s): {shown}")
    jobs = [(s, gt_root / s, pred_root / s) for s in sequences]
    bar = tqdm(total=len(jobs), unit="seq", desc="hodor-eval", disable=not progress)
    results: list[list[ObjectScores]] = []
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                results.append(_evaluate_job(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                for scores in pool.map(_evaluate_job, jobs):
                    results.append(scores)
                    bar.update()
    finally:
        bar.close()
    return Evaluation(objects=tuple(o for scores in results for o in scores))
