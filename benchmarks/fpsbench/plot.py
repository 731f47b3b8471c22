"""FPS against object count, one panel per min_dim: the engine's backends and the peers."""

from __future__ import annotations

from pathlib import Path

from fpsbench.results import Report, SpeedRow
from hodor.engine.io.files import atomic_write


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = report.settings.min_dims
    objects = report.settings.objects
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4.2), squeeze=False)
    series: dict[str, list[tuple[int, int, SpeedRow]]] = {}
    for row in report.rows():
        series.setdefault(row.system, []).append((row.min_dim, row.objects, row))
    kinds = {row.system: row.kind for row in report.rows()}
    official = report.official
    for ax, dim in zip(axes[0], dims, strict=True):
        for name, rows in series.items():
            pts = sorted((o, r.fps) for d, o, r in rows if d == dim and r.fps.median is not None)
            if pts:
                x = [o for o, _ in pts]
                med = [s.median for _, s in pts]
                err = [[m - s.min for m, (_, s) in zip(med, pts, strict=True)],
                       [s.max - m for m, (_, s) in zip(med, pts, strict=True)]]  # fmt: skip
                style = "-" if kinds[name] == "engine" else "--"
                ax.errorbar(x, med, yerr=err, marker="o", linestyle=style, capsize=3, label=name)
        if report.end_to_end is not None:
            # Each end-to-end point beside the model alone on the same frames (run, chunked backbone).
            for r in report.end_to_end.results:
                if r.min_dim == dim and r.model_only_fps.median is not None:
                    ax.plot([r.objects], [r.model_only_fps.median], marker="x", linestyle="none",
                            label=f"{r.backend} model only (run)")  # fmt: skip
        if official is not None and official.status == "measured":
            pts = sorted((r.objects, r.fps) for r in official.results if r.min_dim == dim)
            if pts:
                ax.plot(
                    [o for o, _ in pts],
                    [s.median for _, s in pts],
                    marker="s",
                    linestyle=":",
                    label="official",
                )
        ax.set_xscale("log", base=2)
        ax.margins(x=0.08, y=0.08)
        ax.set_xticks(objects, [str(o) for o in objects])
        ax.set_xlabel("objects")
        ax.set_ylabel("frames per second")
        ax.set_ylim(bottom=0)
        ax.set_title(f"min_dim {dim}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    weights = "random weights" + (", peers dashed" if report.peers is not None else "")
    fig.suptitle(f"HODOR, {weights}, window {report.settings.window}\n{report.machine.where}", fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
