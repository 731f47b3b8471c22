"""hodor-run --ray on a local Ray instance (2 CPUs, loopback only) over a small synthetic dataset:
a worker killed in the middle of a sequence, a failing sequence, and outputs (and J&F) identical
to the single-process run. A random-weight checkpoint of the real network runs in the workers."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Set before Ray is imported: it reads them then. Loopback only, and no usage report.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install 'hodor-engine[ray]'): the Ray scale-out is not tested"
)

from hodor.engine import cli  # noqa: E402
from hodor.evaluation import cli as eval_cli  # noqa: E402
from tests.synthetic_data import make_dataset  # noqa: E402

pytestmark = pytest.mark.slow

SIZE = (64, 96)
LONG = "long"  # the sequence whose worker is killed
BROKEN = "broken"


def _dataset(base: Path) -> tuple[Path, list[str]]:
    root = base / "DAVIS"
    short = make_dataset(root, sequences=2, frames=5, size=SIZE, objects=2, seed=7)
    make_dataset(base / "more", sequences=2, frames=12, size=SIZE, objects=2, seed=8)
    for source, target in (("synth-00", LONG), ("synth-01", BROKEN)):
        for kind in ("JPEGImages", "Annotations"):
            shutil.copytree(base / "more" / kind / "480p" / source, root / kind / "480p" / target)
    for png in (root / "Annotations" / "480p" / BROKEN).glob("*.png"):
        png.unlink()
    names = [LONG, *short, BROKEN]  # the long one first, so that a worker takes it at once
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{n}\n" for n in names))
    return root, names


def _kill_mid_sequence(out: Path, name: str, report: dict) -> None:
    """Kill the worker writing ``name`` once it has written a mask and not yet finished."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not report.get("stop"):
        for staging in out.glob(f".{name}.staging-*"):
            written = len(list(staging.glob("*.png")))
            if written:
                token = staging.name.rsplit(".staging-", 1)[1]  # .<seq>.staging-<pid>-<random>
                pid = int(token.split("-")[0])
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
                report.update(
                    pid=pid,
                    written=written,
                    staging_left=staging.exists(),  # a dead worker renames nothing
                    finished_at_kill=(out / name).exists(),
                )
                return
        time.sleep(0.002)


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as f:
        return {row["sequence"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, parity_checkpoint):
    """The same dataset run in this process and on Ray (with a worker killed mid-sequence)."""
    base = tmp_path_factory.mktemp("ray-data")
    root, names = _dataset(base)
    common = [str(root), "--model", str(parity_checkpoint), "--min-dim", "64", "--device", "cpu"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (--ray-cpus-per-worker 1), so the arithmetic is the same
    try:
        local_code = cli.main([*common, "--out", str(base / "local")])
    finally:
        torch.set_num_threads(threads)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        node_address = ray.nodes()[0]["NodeManagerAddress"]
        report: dict = {}
        watcher = threading.Thread(target=_kill_mid_sequence, args=(base / "ray", LONG, report), daemon=True)
        watcher.start()
        start = time.perf_counter()
        ray_code = cli.main([*common, "--out", str(base / "ray"), "--ray"])
        ray_seconds = time.perf_counter() - start
        report["stop"] = True
        watcher.join(timeout=10)
    finally:
        ray.shutdown()
    return {
        "root": root,
        "names": names,
        "local": base / "local",
        "ray": base / "ray",
        "local_code": local_code,
        "ray_code": ray_code,
        "kill": report,
        "node_address": node_address,
        "ray_seconds": ray_seconds,
    }


def test_local_ray_stays_on_loopback(runs):
    assert runs["node_address"] == "127.0.0.1"


def test_killed_worker_sequence_is_retried_and_never_half_written(runs):
    kill = runs["kill"]
    assert "pid" in kill, "the watcher never saw the long sequence being written"
    assert kill["staging_left"] and not kill["finished_at_kill"], kill  # killed mid-sequence
    rows = _summary(runs["ray"])
    assert rows[LONG]["status"] == "ok" and rows[LONG]["attempts"] == "2"
    assert rows[LONG]["frames"] == "12"
    assert int(rows[LONG]["worker"].rsplit(":", 1)[1]) != kill["pid"]
    assert not [p.name for p in runs["ray"].iterdir() if p.name.startswith(".")]  # no staging left
    assert not (runs["ray"].parent / ".ray.lock").exists()  # the driver's claim on OUT, released


def test_failing_sequence_on_ray_is_reported_and_the_others_go_on(runs):
    assert runs["local_code"] == runs["ray_code"] == 1
    for out in (runs["local"], runs["ray"]):
        rows = _summary(out)
        assert [rows[n]["status"] for n in runs["names"]] == ["ok", "ok", "ok", "failed"]
        assert "mask not found" in rows[BROKEN]["error"]
        assert not (out / BROKEN).exists()


def test_ray_outputs_and_jf_equal_the_single_process_run(runs, capsys):
    done = runs["names"][:-1]
    for name in done:
        local = sorted((runs["local"] / name).glob("*.png"))
        assert [p.name for p in local] == sorted(p.name for p in (runs["ray"] / name).glob("*.png"))
        for png in local:
            a = np.asarray(Image.open(png))
            b = np.asarray(Image.open(runs["ray"] / name / png.name))
            assert np.array_equal(a, b), f"{name}/{png.name} differs"
    figures = []
    for out in (runs["local"], runs["ray"]):
        code = eval_cli.main([str(out), str(runs["root"]), "--seqs", *done, "--quiet", "--workers", "1"])
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert code == 0
        figures.append(line.split(" over ")[0])
    with capsys.disabled():
        print(
            f"\nJ&F single process: {figures[0]}; on Ray: {figures[1]}; Ray run {runs['ray_seconds']:.1f} s"
        )
    assert figures[0] == figures[1]
