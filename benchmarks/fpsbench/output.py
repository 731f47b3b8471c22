"""The run's files: ``fps.json`` (every figure), ``fps.md`` (RESULTS.md tables), the plot; each
written whole under a temporary name, then renamed."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path

from fpsbench.markdown import format_markdown
from fpsbench.plot import plot
from fpsbench.results import Report
from hodor.engine.io.files import atomic_write

FILES = {"json": "fps.json", "plot": "fps_vs_objects.png", "markdown": "fps.md"}


def write_outputs(report: Report, out: Path, log: Callable[[str], None]) -> None:
    report.files = dict(FILES)
    try:
        plot(report, out / FILES["plot"])
    except Exception:
        # The figures matter more than the picture: keep the JSON and say what went wrong.
        log("plot failed:\n" + traceback.format_exc())
        report.files["plot"] = None
    with atomic_write(out / FILES["json"]) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    with atomic_write(out / FILES["markdown"]) as tmp:
        tmp.write_text(format_markdown(report))
