"""The synthetic input every system gets: frames and a reference mask at frame 0."""

from __future__ import annotations

import math

import numpy as np


def input_size(min_dim: int) -> tuple[int, int]:
    """A 16:9 frame whose short side is already ``min_dim`` (height, width).

    The pipeline resizes every input to ``min_dim``; feeding that size keeps the model's cost the one
    of ``min_dim`` and leaves the resize itself nearly free, as for a video recorded at that size.
    """
    # Even width: 4:2:0 video needs it (854x480, 1280x720, as real recordings are).
    return min_dim, 2 * int(round(min_dim * 8 / 9))


class SyntheticVideo:
    """Deterministic RGB frames (smooth gradients with noise) and a reference id mask.

    A few distinct frames are cycled: the values do not change the cost, and memory stays small.
    ``frame(t)`` is ``[H, W, 3]`` uint8 RGB; ``reference`` is ``[H, W]`` uint8 object ids 1..objects.
    """

    DISTINCT = 8

    def __init__(self, height: int, width: int, num_objects: int, seed: int = 0) -> None:
        self.height, self.width, self.num_objects = height, width, num_objects
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._frames = []
        for t in range(self.DISTINCT):
            base = np.stack(
                [
                    127 + 100 * np.sin(xx / 37.0 + t / 3.0),
                    127 + 100 * np.cos(yy / 23.0 - t / 5.0),
                    127 + 60 * np.sin((xx + yy) / 51.0 + t),
                ],
                axis=-1,
            )
            base += rng.normal(0, 8, size=base.shape).astype(np.float32)
            self._frames.append(np.clip(base, 0, 255).astype(np.uint8))
        self.reference = self._reference_mask()

    def _reference_mask(self) -> np.ndarray:
        """Object ``k`` (ids 1..I) as a disc on a grid of cells, large enough at 1/8 to survive."""
        h, w, n = self.height, self.width, self.num_objects
        cols = math.ceil(math.sqrt(n * w / h))
        rows = math.ceil(n / cols)
        ids = np.zeros((h, w), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        for k in range(n):
            r, c = divmod(k, cols)
            cy, cx = (r + 0.5) * h / rows, (c + 0.5) * w / cols
            radius = 0.35 * min(h / rows, w / cols)
            ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k + 1
        return ids

    def frame(self, t: int) -> np.ndarray:
        return self._frames[t % self.DISTINCT]

    @classmethod
    def at(cls, min_dim: int, objects: int) -> SyntheticVideo:
        return cls(*input_size(min_dim), objects)
