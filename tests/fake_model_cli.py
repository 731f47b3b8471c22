"""``hodor-run`` in a process of its own, with the stand-in network of ``engine_fake_backend``.

``python tests/fake_model_cli.py ARGS`` runs ``hodor.engine.cli.main(ARGS)`` with any ``--model``
path opened as the stand-in (small sizes). ``HODOR_TEST_FRAME_DELAY`` (seconds) slows each
frame's decode stage down, so that a test can signal the process mid-run. Ctrl-C raises
KeyboardInterrupt even where the test runner's shell started it with SIGINT ignored.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
signal.signal(signal.SIGINT, signal.default_int_handler)

from hodor.engine import cli  # noqa: E402
from tests.engine_fake_backend import FakeBackend, small_config  # noqa: E402

DELAY = float(os.environ.get("HODOR_TEST_FRAME_DELAY", "0"))


class SlowFake(FakeBackend):
    def decode(self, *args):
        time.sleep(DELAY)
        return super().decode(*args)


def open_fake(model_path, backend, device, overrides, torch_options=None):
    return SlowFake(config=overrides.apply(small_config(min_dim=48, max_dim=96)))


if __name__ == "__main__":
    cli.open_backend = open_fake
    sys.exit(cli.main(sys.argv[1:]))
