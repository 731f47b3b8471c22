"""The stage seam over an export's graphs run on the host: what ONNX Runtime and OpenVINO share.

Both runtimes take numpy arrays by the graphs' input names and give numpy arrays back, so the
seam (``hodor.engine.backends.base.Backend``) is the same for both: tensors to contiguous host
arrays (float32, or bool for the padding masks), one graph per stage (``backbone``, ``encoder``,
``decoder``), the limits from the export's manifest. A subclass says how one stage runs
(:meth:`HostGraphSeam._infer`) and may adjust the decoder's logits (:meth:`HostGraphSeam._logits`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from hodor.engine.backends.manifest import Manifest


def host_feeds(inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Graph inputs as contiguous host arrays: bool stays bool, everything else float32."""
    feeds = {}
    for name, t in inputs.items():
        t = t.detach().to("cpu")
        t = t if t.dtype == torch.bool else t.to(torch.float32)
        feeds[name] = np.ascontiguousarray(t.numpy())
    return feeds


class HostGraphSeam:
    """``backbone`` / ``encode`` / ``decode`` / ``check_limits`` over ``_infer``; the subclass sets
    ``manifest`` and ``device`` (where the outputs go)."""

    manifest: Manifest
    device: torch.device

    def _infer(self, stage: str, feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """Run ``stage``'s graph on ``feeds``: its outputs in the graph's order, as host tensors."""
        raise NotImplementedError

    def _logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The decoder's logits as the seam promises them (a runtime may need to fix them up)."""
        return logits

    def _run(self, stage: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        return [out.to(self.device) for out in self._infer(stage, host_feeds(inputs))]

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` -> ``f4 [B,256,H/4,W/4]``, ``f8 [B,256,H/8,W/8]``, float32."""
        f4, f8 = self._run("backbone", images=images)
        return f4, f8

    def encode(
        self,
        f8: torch.Tensor,
        fg_masks: torch.Tensor,
        bg_masks: torch.Tensor,
        fg_invalid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f8 [B,256,h,w]``, ``fg_masks [B,I,h,w]``, ``bg_masks [B,Qb,h,w]``, ``fg_invalid [B,I]``
        bool (None: no padding) -> ``fg_desc [B,I,256]``, ``bg_desc [B,Qb,256]``."""
        if fg_invalid is None:
            fg_invalid = torch.zeros(fg_masks.shape[:2], dtype=torch.bool)
        fg, bg = self._run(
            "encoder", f8=f8, fg_masks=fg_masks, bg_masks=bg_masks, fg_invalid=fg_invalid.to(torch.bool)
        )
        return fg, bg

    def decode(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> torch.Tensor:
        """-> ``logits [B,1+Qb+I,2h,2w]`` (shapes as ``hodor.engine.backends.base.Backend.decode``)."""
        (logits,) = self._run(
            "decoder",
            f4=f4,
            f8=f8,
            fg_hist=fg_hist,
            bg_hist=bg_hist,
            fg_invalid=fg_invalid.to(torch.bool),
            bg_invalid=bg_invalid.to(torch.bool),
        )
        return self._logits(logits)

    def check_limits(
        self, num_objects: int, history: int, height: int, width: int, streams: int = 1
    ) -> None:
        """``height``, ``width``: the padded frame; ``streams``: videos per encode or decode call.
        ``HodorError`` names the limit and the re-export."""
        self.manifest.limits.check(num_objects, history, height, width, streams)
