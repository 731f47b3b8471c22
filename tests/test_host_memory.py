"""Freed host memory kept for reuse on the CPU (:mod:`hodor.engine.loop.host_memory`).

Each case runs in a fresh interpreter: the C library's settings are per process. What is counted
is the post-decode's minor page faults at a 480p frame's size once warm (``getrusage``). Where
glibc maps large blocks afresh each call, every call faults their pages in again (about 15,000
faults); with the settings made, none should. glibc's defaults adapt to what the process did
before (a count of 0 and one of 15,000 have both been seen), so the control maps every large
block afresh explicitly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hodor.engine.loop import host_memory

REPO = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent(
    """
    import json, resource
    import torch
    from hodor.engine.loop.host_memory import keep_freed_host_memory
    from hodor.engine.loop.masks import background_grid, id_lookup
    from hodor.engine.loop.post_decode import masks_from_logits

    kept = keep_freed_host_memory()
    again = keep_freed_host_memory()  # idempotent: the same answer
    torch.set_num_threads(1)
    logits = torch.randn(1, 14, 120, 208)
    lookup = id_lookup(10, [1, 2, 3, 4], "cpu")
    grid = background_grid(3, 3, 60, 104)
    call = lambda: masks_from_logits(logits, 10, lookup, grid, (463, 823), (480, 854))
    for _ in range(3):
        call()
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"kept": kept, "again": again, "faults": sorted(faults)[2]}))
    """
)

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="the settings are glibc's",
)


def _probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in host_memory.USER_SETTINGS}
    environ.pop(host_memory.OPT_OUT, None)
    environ.update(env, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@linux_glibc
def test_the_post_decode_stops_faulting_its_pages_in_each_frame():
    kept = _probe()
    assert kept["kept"] is True and kept["again"] is True
    assert kept["faults"] < 200, kept  # a margin for the interpreter's own


@linux_glibc
def test_the_users_own_settings_stand_and_the_count_sees_faults():
    """With glibc told to map every large block afresh (the user's setting, which the engine
    leaves alone), each call faults the blocks in again: the count above can fail."""
    theirs = _probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert theirs["kept"] is False and theirs["faults"] > 2000, theirs


@linux_glibc
def test_opting_out_leaves_the_c_library_alone():
    assert _probe(**{host_memory.OPT_OUT: "0"})["kept"] is False
