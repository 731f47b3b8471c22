"""``hodor-eval PRED GT``: J&F of predicted masks by the DAVIS 2017 semi-supervised protocol.

Mistakes in the input end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hodor.command_line import EXIT_USER_ERROR, CommandLineParser, positive_int, print_error
from hodor.errors import HodorError

PROG = "hodor-eval"


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(
        prog=PROG,
        description="J&F of predicted masks against ground truth (DAVIS 2017 semi-supervised protocol: "
        "first and last frames excluded; F with a boundary tolerance of ceil(0.008 x image diagonal)).",
    )
    p.add_argument("pred", type=Path, help="predictions: PRED/<seq>/<frame>.png (hodor-run's dataset output)")
    p.add_argument(
        "gt",
        type=Path,
        help="ground truth: a DAVIS root (its Annotations/480p), an Annotations directory, "
        "or any directory of <seq>/<frame>.png",
    )
    p.add_argument(
        "--seqs", nargs="+", metavar="S", help="only these sequences (names, or a .txt file of names)"
    )
    p.add_argument(
        "--split",
        help="DAVIS root: the sequences of ImageSets/2017/SPLIT.txt (default val where it exists, "
        "else every sequence of the ground truth)",
    )
    p.add_argument("--out", type=Path, help="where the result files go (default: PRED)")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=min(4, os.cpu_count() or 1),
        help="processes scoring sequences in parallel (default: up to 4, one per core)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary line, no table or progress")
    return p


def ground_truth(gt: Path, split: str | None, seqs: Sequence[str] | None) -> tuple[Path, list[str]]:
    """The directory of ``<seq>/`` ground-truth folders and the sequences to score."""
    from hodor.engine.datasets.davis import davis_annotations, davis_sequence_names, expand_seqs, is_davis
    from hodor.evaluation.benchmark import sequence_directories

    if not gt.is_dir():
        raise HodorError(f"ground truth not found: {gt} is not a directory")
    if is_davis(gt):
        return davis_annotations(gt), davis_sequence_names(gt, split, seqs)
    if split is not None:
        raise HodorError(f"--split needs a DAVIS root (with ImageSets/2017), but {gt} is not one")
    annotations = gt / "Annotations" if (gt / "Annotations").is_dir() else gt
    return annotations, expand_seqs(seqs) or sequence_directories(annotations)


def run(args: argparse.Namespace) -> str:
    from hodor.evaluation.benchmark import evaluate
    from hodor.evaluation.report import format_table, write_results

    if not args.pred.is_dir():
        raise HodorError(f"predictions not found: {args.pred} is not a directory")
    annotations, sequences = ground_truth(args.gt, args.split, args.seqs)
    evaluation = evaluate(args.pred, annotations, sequences, workers=args.workers, progress=not args.quiet)
    out = args.out or args.pred
    try:
        paths = write_results(evaluation, out)
    except OSError as exc:
        raise HodorError(f"cannot write the results to {out}: {exc.strerror or exc}") from None
    if not args.quiet:
        print(format_table(evaluation))
    figures = evaluation.global_figures()
    return (
        f"J&F {figures['J&F-Mean']:.4f} (J {figures['J-Mean']:.4f}, F {figures['F-Mean']:.4f}) over "
        f"{len(evaluation.objects)} objects in {len(evaluation.sequences)} sequences; "
        f"results in {', '.join(str(p) for p in paths)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except ModuleNotFoundError as exc:
        if exc.name != "scipy":
            raise
        print_error(PROG, "scipy is missing: pip install 'hodor-engine[eval]'")
        return EXIT_USER_ERROR
    except HodorError as exc:
        print_error(PROG, exc)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
