"""Writing and printing J&F results: per-sequence CSV, global CSV, JSON, and a text table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hodor.engine.io.files import atomic_write
from hodor.evaluation.benchmark import MEASURES, Evaluation

PER_SEQUENCE_CSV = "per-sequence_results.csv"
GLOBAL_CSV = "global_results.csv"
RESULTS_JSON = "results.json"
DIGITS = 6


def _csv(header: list[str], rows: list[list[object]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


def per_sequence_csv(evaluation: Evaluation) -> str:
    """One row per object of each sequence; ``Sequence`` is ``<seq>_<id>``, as the DAVIS toolkit has it."""
    rows = [
        [
            f"{o.sequence}_{o.object_id}",
            o.sequence,
            o.object_id,
            *(round(v, DIGITS) for v in o.row().values()),
        ]
        for o in evaluation.objects
    ]
    return _csv(["Sequence", "Video", "Object", *MEASURES], rows)


def global_csv(evaluation: Evaluation) -> str:
    figures = evaluation.global_figures()
    return _csv(list(MEASURES), [[round(figures[m], DIGITS) for m in MEASURES]])


def results_document(evaluation: Evaluation) -> dict:
    """Everything: the global figures, and per object its statistics and per-frame J and F."""
    return {
        "protocol": "DAVIS 2017 semi-supervised: first and last frames excluded, "
        "F boundary tolerance ceil(0.008 x image diagonal)",
        "global": evaluation.global_figures(),
        "sequences": len(evaluation.sequences),
        "objects": [
            {
                "sequence": o.sequence,
                "object": o.object_id,
                **o.row(),
                "J-per-frame": list(o.j_frames),
                "F-per-frame": list(o.f_frames),
            }
            for o in evaluation.objects
        ],
    }


def write_results(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Write the three result files into ``out_dir``, each atomically; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        PER_SEQUENCE_CSV: per_sequence_csv(evaluation),
        GLOBAL_CSV: global_csv(evaluation),
        RESULTS_JSON: json.dumps(results_document(evaluation), indent=1) + "\n",
    }
    paths = []
    for name, text in contents.items():
        with atomic_write(out_dir / name) as tmp:
            tmp.write_text(text)
        paths.append(out_dir / name)
    return paths


def format_table(evaluation: Evaluation) -> str:
    """The global figures and the per-object means as aligned text."""
    figures = evaluation.global_figures()
    lines = ["Global results:", "  ".join(f"{m:>8}" for m in MEASURES)]
    lines.append("  ".join(f"{figures[m]:>8.3f}" for m in MEASURES))
    width = max(len("Sequence"), *(len(f"{o.sequence}_{o.object_id}") for o in evaluation.objects))
    lines += ["", "Per-sequence results:", f"{'Sequence':<{width}}  {'J-Mean':>7}  {'F-Mean':>7}"]
    for o in evaluation.objects:
        lines.append(f"{o.sequence + '_' + str(o.object_id):<{width}}  {o.j.mean:>7.3f}  {o.f.mean:>7.3f}")
    return "\n".join(lines)
