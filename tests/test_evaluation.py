"""hodor-eval: the DAVIS measures by hand, against vos-benchmark (an independent implementation of
the DAVIS toolkit's J and F), and the command line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hodor.engine.io import default_palette
from hodor.evaluation import cli
from hodor.evaluation.benchmark import evaluate
from hodor.evaluation.measures import (
    boundary_f_measure,
    boundary_map,
    boundary_tolerance,
    region_similarity,
    statistics,
)
from tests.synthetic_data import make_dataset

TOLERANCE = 1e-3


def square(size=(100, 100), y=40, x=40, side=20) -> np.ndarray:
    m = np.zeros(size, bool)
    m[y : y + side, x : x + side] = True
    return m


# --------------------------------------------------------------------------- measures by hand


def test_boundary_map_by_hand():
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    assert np.array_equal(boundary_map(m), expected)


def test_boundary_tolerance_is_ceil_of_0_008_diagonal():
    assert boundary_tolerance(480, 854) == 8  # 0.008 * 979.65 = 7.84
    assert boundary_tolerance(100, 100) == 2  # 1.13
    assert boundary_tolerance(120, 200) == 2  # 1.87


def test_region_similarity_by_hand():
    gt = square()
    shifted = square(x=42)
    assert region_similarity(shifted, gt) == pytest.approx(360 / 440)
    assert region_similarity(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert region_similarity(np.zeros_like(gt), gt) == 0.0
    void = np.zeros_like(gt)
    void[:, 60:] = True  # the two columns only the shifted square covers are void: 360 / (440 - 40)
    assert region_similarity(shifted, gt, void) == pytest.approx(0.9)


def test_boundary_f_within_and_beyond_tolerance():
    gt = square()
    assert boundary_f_measure(square(x=42), gt) == 1.0  # every edge within 2 px
    assert boundary_f_measure(square(x=42), gt, tolerance=1) < 1.0
    assert boundary_f_measure(square(x=50), gt) < 0.7
    assert boundary_f_measure(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert boundary_f_measure(np.zeros_like(gt), gt) == 0.0
    assert boundary_f_measure(gt, np.zeros_like(gt)) == 0.0


def test_statistics_mean_recall_decay_by_hand():
    # Quarters of 8 frames, as the DAVIS toolkit cuts them: [0:3], [2:5], [4:6], [5:8].
    s = statistics(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]))
    assert s.mean == pytest.approx(0.55)
    assert s.recall == pytest.approx(0.5)  # strictly above 0.5
    assert s.decay == pytest.approx(0.8 - 0.3)
    one = statistics(np.array([0.7]))
    assert (one.mean, one.recall, one.decay) == (pytest.approx(0.7), 1.0, 0.0)


# --------------------------------------------------------------------------- against vos-benchmark


def _save(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(default_palette())
    img.save(path)


def _perturb(gt: np.ndarray, t: int, rng: np.random.Generator, style: int) -> np.ndarray:
    """A wrong prediction of ``gt [H,W]`` at frame ``t``: shifted, eroded, noisy, ids swapped or lost."""
    pred = np.roll(gt, (t % 3 - 1, 2 * (t % 4) - 3), axis=(0, 1))
    if style == 0:
        pred[(pred == 1) & (rng.random(pred.shape) < 0.3)] = 0  # ragged object 1
        if t % 3 == 0:
            pred[pred == 2] = 0  # object 2 lost in some frames
        pred[5:12, 5:20] = 7  # an id the ground truth does not have
    elif style == 1:
        flip = rng.random(pred.shape) < 0.05
        pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
        if t > 4:
            pred = np.where(pred == 1, 2, np.where(pred == 2, 1, pred))  # identities swapped late on
    else:
        pred = np.roll(gt, (0, 6 * t), axis=(0, 1))  # drifting away
    return pred


@pytest.fixture(scope="module")
def scored_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Ground truth of three sequences (two sizes, so two boundary tolerances) and wrong predictions."""
    base = tmp_path_factory.mktemp("jf")
    gt_root, pred_root = base / "gt", base / "pred"
    sources = [
        (
            make_dataset(base / "small", sequences=2, frames=9, size=(90, 160), objects=3, seed=3),
            base / "small",
        ),
        (
            make_dataset(base / "large", sequences=1, frames=7, size=(240, 427), objects=2, seed=4),
            base / "large",
        ),
    ]
    rng = np.random.default_rng(0)
    style = 0
    for names, root in sources:
        for name in names:
            target = f"{root.name}-{name}"
            shutil.copytree(root / "Annotations" / "480p" / name, gt_root / target)
            for t, png in enumerate(sorted((gt_root / target).glob("*.png"))):
                gt = np.asarray(Image.open(png))
                _save(pred_root / target / png.name, _perturb(gt, t, rng, style))
            style += 1
    return pred_root, gt_root


def test_measures_match_vos_benchmark(scored_pair):
    from vos_benchmark.benchmark import VideoEvaluator  # in the test extra: missing is an error, not a skip

    pred_root, gt_root = scored_pair
    sequences = sorted(p.name for p in gt_root.iterdir())
    ours = evaluate(pred_root, gt_root, sequences, workers=1, progress=False)
    by_key = {(o.sequence, o.object_id): o for o in ours.objects}
    theirs_j, theirs_f = [], []
    for name in sequences:
        # Per frame too: the reference evaluator keeps every frame's J and F per object.
        evaluator = VideoEvaluator(str(gt_root), str(pred_root))
        _, iou, boundary = evaluator(name)
        assert sorted(iou) == sorted(i for s, i in by_key if s == name)
        for object_id in iou:
            o = by_key[(name, object_id)]
            assert o.j.mean == pytest.approx(iou[object_id] / 100, abs=TOLERANCE), (name, object_id)
            assert o.f.mean == pytest.approx(boundary[object_id] / 100, abs=TOLERANCE), (name, object_id)
            theirs_j.append(iou[object_id] / 100)
            theirs_f.append(boundary[object_id] / 100)
    # Every measure is exercised away from the trivial values.
    assert 0.05 < min(theirs_j) and max(theirs_j) < 0.95 and min(theirs_f) < 0.9
    figures = ours.global_figures()
    assert figures["J-Mean"] == pytest.approx(np.mean(theirs_j), abs=TOLERANCE)
    assert figures["F-Mean"] == pytest.approx(np.mean(theirs_f), abs=TOLERANCE)
    assert figures["J&F-Mean"] == pytest.approx((np.mean(theirs_j) + np.mean(theirs_f)) / 2, abs=TOLERANCE)


def test_per_frame_values_and_boundaries_match_vos_benchmark(scored_pair):
    from vos_benchmark.evaluator import Evaluator
    from vos_benchmark.utils import _seg2bmap

    pred_root, gt_root = scored_pair
    name = sorted(p.name for p in gt_root.iterdir())[1]
    ours = {o.object_id: o for o in evaluate(pred_root, gt_root, [name], progress=False).objects}
    reference = Evaluator()
    for png in sorted((gt_root / name).glob("*.png"))[1:-1]:
        gt = np.asarray(Image.open(png))
        pred = np.asarray(Image.open(pred_root / name / png.name))
        reference.feed_frame(pred, gt)
        for i in ours:
            assert np.array_equal(boundary_map(pred == i), _seg2bmap(pred == i).astype(bool))
    for i, o in ours.items():
        assert np.allclose(o.j_frames, reference.object_iou[i], atol=TOLERANCE)
        assert np.allclose(o.f_frames, reference.boundary_f[i], atol=TOLERANCE)
        # Recall and decay from the reference's per-frame values.
        expected = statistics(np.array(reference.object_iou[i]))
        assert (o.j.recall, o.j.decay) == (pytest.approx(expected.recall), pytest.approx(expected.decay))


# --------------------------------------------------------------------------- command line


def test_cli_writes_csv_json_and_prints_the_figures(scored_pair, tmp_path, capsys):
    pred_root, gt_root = scored_pair
    out = tmp_path / "eval"
    code = cli.main([str(pred_root), str(gt_root), "--out", str(out), "--workers", "2"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    with open(out / "per-sequence_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["Sequence"] for r in rows][:3] == ["large-synth-00_1", "large-synth-00_2", "small-synth-00_1"]
    assert len(rows) == 2 + 3 + 3
    with open(out / "global_results.csv") as f:
        (global_row,) = list(csv.DictReader(f))
    document = json.loads((out / "results.json").read_text())
    jf = float(global_row["J&F-Mean"])
    assert jf == pytest.approx(document["global"]["J&F-Mean"], abs=1e-6)
    assert jf == pytest.approx((float(global_row["J-Mean"]) + float(global_row["F-Mean"])) / 2, abs=1e-5)
    mean_j = np.mean([float(r["J-Mean"]) for r in rows])
    assert float(global_row["J-Mean"]) == pytest.approx(mean_j, abs=1e-5)
    assert "Global results:" in stdout and f"J&F {jf:.4f}" in stdout.strip().splitlines()[-1]
    assert not list(out.glob(".*"))  # no temporaries left


def test_cli_reads_a_davis_root_and_its_image_set(tmp_path, capsys):
    root = tmp_path / "davis"
    names = make_dataset(root, sequences=3, frames=5, size=(48, 64), objects=2, seed=1)
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{names[0]}\n{names[2]}\n")
    pred = tmp_path / "pred"
    for name in (names[0], names[2]):  # a perfect prediction of the two listed sequences
        shutil.copytree(root / "Annotations" / "480p" / name, pred / name)
    code = cli.main([str(pred), str(root), "--quiet"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert stdout.startswith("J&F 1.0000 (J 1.0000, F 1.0000) over 4 objects in 2 sequences")


def _one_error_line(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and "hodor-eval:" in line and "%" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hodor-eval: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_missing_sequence_frame_or_size(scored_pair, tmp_path, capsys):
    pred_root, gt_root = scored_pair
    pred = tmp_path / "pred"
    shutil.copytree(pred_root, pred)
    victim = sorted(p.name for p in gt_root.iterdir())[0]
    frame = sorted((pred / victim).glob("*.png"))[2]
    frame.unlink()
    code = cli.main([str(pred), str(gt_root), "--quiet", "--workers", "1"])
    _one_error_line(code, capsys.readouterr().err, "missing prediction", frame.name)
    _save(frame, np.zeros((10, 10), np.uint8))
    code = cli.main([str(pred), str(gt_root), "--quiet", "--workers", "1"])
    _one_error_line(code, capsys.readouterr().err, "10x10")
    shutil.rmtree(pred / victim)
    code = cli.main([str(pred), str(gt_root), "--quiet"])
    _one_error_line(code, capsys.readouterr().err, "no predictions for 1 sequence", victim)
    code = cli.main([str(tmp_path / "absent"), str(gt_root)])
    _one_error_line(code, capsys.readouterr().err, "predictions not found")


def test_eval_does_not_import_torch(scored_pair):
    pred_root, gt_root = scored_pair
    argv = [str(pred_root), str(gt_root), "--quiet", "--out", str(pred_root.parent)]
    code = (
        f"import sys; from hodor.evaluation import cli; rc = cli.main({argv!r}); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_cli_argument_errors_are_one_line_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pred", "gt", "--workers", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "hodor-eval: error: argument --workers: expected a positive integer, got 0 (see hodor-eval --help)"
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pred"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("hodor-eval ")
