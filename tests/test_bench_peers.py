"""The peers' path of ``benchmarks/fps.py --peers`` at a tiny size on the CPU: each peer's network is
built from its package's own config with random weights, steps a synthetic clip through its public
API, and comes out of the benchmark's grid as typed results with engine/peer ratios.

The peers are an optional extra (``pip install 'hodor-engine[peers]'``): a test whose peer package is
not installed skips, saying which package is missing. Nothing is timed for its value here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from fpsbench.grid import Grid  # noqa: E402
from fpsbench.peers import PEERS, PeerPool, PeerVariant  # noqa: E402
from fpsbench.results import Settings  # noqa: E402
from fpsbench.synthetic import SyntheticVideo  # noqa: E402
from tests.engine_fake_backend import FakeBackend  # noqa: E402

CPU = torch.device("cpu")
TINY = 64  # min_dim: frames of 64x114
SMOKE_PEERS = ("cutie-small", "sam2.1-tiny")  # the smallest network of each


@pytest.fixture(scope="module")
def pool() -> PeerPool:
    """The installed smoke peers at fp32, each network built once for the module."""
    return PeerPool([PeerVariant(PEERS[n], "fp32", native=False) for n in SMOKE_PEERS], CPU)


def _variant(pool: PeerPool, name: str) -> PeerVariant:
    reason = PEERS[name].missing()
    if reason:
        pytest.skip(f"peer {name}: {reason}")
    return next(v for v in pool.variants if v.spec.name == name)


@pytest.mark.parametrize("name", SMOKE_PEERS)
def test_peer_segments_a_tiny_clip_through_its_own_api(pool, name, tmp_path):
    variant = _variant(pool, name)
    model = pool.model(variant, TINY)
    assert model.steady_after > 1 and model.setting.name == "fp32"
    video = SyntheticVideo.at(TINY, 2)
    session = model.open_session(video, 4, str(tmp_path))
    first = session.start()
    assert first.shape == video.reference.shape and first.dtype == np.uint8
    assert set(np.unique(first)) == {0, 1, 2}  # both objects given at frame 0 come back there
    if name.startswith("cutie"):
        assert np.array_equal(first, video.reference)  # Cutie returns the given mask on its frame
    for _ in range(3):
        ids = session.step()
        assert ids.shape == video.reference.shape and set(np.unique(ids)) <= {0, 1, 2}
    session.close()


def test_grid_measures_peers_beside_the_engine(tmp_path):
    variants = [
        PeerVariant(PEERS[n], "fp32", native=False) for n in SMOKE_PEERS if PEERS[n].missing() is None
    ]
    if not variants:
        pytest.skip("no peer package installed (pip install 'hodor-engine[peers]')")
    pool = PeerPool(variants, CPU)
    for v in variants:
        # A smoke run: two warm-up frames instead of filling the peer's memory.
        pool.model(v, TINY).steady_after = 2
    settings = Settings(
        min_dims=[TINY], objects=[2], window=2, warmup=1, frames=1, repeats=2, streams=0,
        throughput_repeats=1, io_frames=1,
    )  # fmt: skip
    frames: list[int] = []
    outcome = Grid(
        settings, CPU, FakeBackend().config, {"fake": FakeBackend()}, pool,
        on_frame=lambda: frames.append(1), say=print, describe=lambda _: None, precisions={"fake": "fp32"},
    ).run()  # fmt: skip
    assert not outcome.dropped, outcome.dropped
    assert [r.backend for r in outcome.results] == ["fake"]
    assert [p.system for p in outcome.peer_results] == [v.name for v in variants]
    for p in outcome.peer_results:
        assert p.fps.n == 2 and p.fps.median > 0 and p.latency_ms.n == 2
        assert p.warmup_frames == 2 and p.memory.host_peak_rss_mib > 0 and p.input_size == [64, 114]
    assert {(q.backend, q.reference) for q in outcome.peer_ratios} == {("fake", v.name) for v in variants}
    # Every stepped frame reached the progress bar: engine 1 + 2, each peer 2 + 2.
    assert len(frames) == 3 + 4 * len(variants)
