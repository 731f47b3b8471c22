#!/usr/bin/env python
"""One ``hodor-run`` in a fresh process, reported as JSON: where its start-up went and how fast
its frames went.

    python benchmarks/startup_probe.py VIDEO --masks M --model CKPT [hodor-run options]

Runs ``hodor.engine.cli.run``, the command's own code, and prints one JSON object: the phases
from the process's start (``python`` (the interpreter, to this script's first line),
``import torch``, ``other imports``, then ``hodor-run``'s own: inputs, CUDA initialisation,
model), the start-up total, the first mask, the frames, their seconds and FPS. ``fps.py``
runs it to report start-up apart from per-frame cost; run twice, the second shows the start-up
with warm caches (page cache, Triton's kernel cache).
"""

from __future__ import annotations

import time

_FIRST_LINE = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402, F401  (timed on its own: the largest import)

_TORCH = time.perf_counter()

from hodor.engine import cli  # noqa: E402
from hodor.engine.pipeline.startup import StartupClock  # noqa: E402

_IMPORTS = time.perf_counter()


def main(argv: list[str]) -> int:
    clock = StartupClock()
    python = _FIRST_LINE - clock.origin
    args = cli.build_parser().parse_args(argv)
    result = cli.run(args, clock)
    phases = [
        ("python", python),
        ("import torch", _TORCH - _FIRST_LINE),
        ("other imports", _IMPORTS - _TORCH),
    ]
    # The clock's first phase ("imports") spans all three, and the parsing of the arguments.
    own = list(result.startup_phases[1:])
    print(
        json.dumps(
            {
                "phases_s": dict(phases + own),
                "startup_s": result.startup,
                "first_mask_s": result.first_mask,
                "frames": result.frames,
                "frames_s": result.seconds,
                "fps": result.fps,
                "backend": result.backend,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
