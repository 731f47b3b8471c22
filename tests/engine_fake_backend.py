"""A small deterministic stand-in for the network, to test the runtime without a checkpoint.

Features are fixed random projections of the average colour of each 4x4 / 8x8 cell;
descriptors are mask-weighted means of the 1/8 features; logits are feature ·
descriptor products, maximised over the valid history. Every stage takes a batch (of frames,
or of streams), computing each item on its own. It records every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hodor.config import parse_config, with_dims

C = 256


def small_config(min_dim: int = 64, max_dim: int = 128, num_bg: int = 9):
    cfg = parse_config({"MODEL": {"NUM_BG_DESCRIPTORS": num_bg}})
    return with_dims(cfg, min_dim, max_dim)


@dataclass
class FakeBackend:
    config: object = field(default_factory=small_config)
    name: str = "fake"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calls: list = field(default_factory=list)
    limits: tuple[int, int] | None = None  # (max objects, max history)
    max_streams: int | None = None

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.w4 = torch.randn(C, 3, generator=gen)
        self.w8 = self.w4  # descriptors (from 1/8) must be comparable with 1/4 pixels
        self.bias = torch.randn(C, generator=gen) * 0.1

    def backbone(self, images):
        self.calls.append(("backbone", tuple(images.shape)))
        f4 = torch.einsum("ck,bkhw->bchw", self.w4, F.avg_pool2d(images, 4)) + self.bias[:, None, None]
        f8 = torch.einsum("ck,bkhw->bchw", self.w8, F.avg_pool2d(images, 8)) + self.bias[:, None, None]
        return torch.tanh(f4), torch.tanh(f8)

    def encode(self, f8, fg_masks, bg_masks, fg_invalid=None):
        invalid = None if fg_invalid is None else fg_invalid.clone()
        self.calls.append(("encode", tuple(fg_masks.shape), tuple(bg_masks.shape), invalid))
        feats = f8.flatten(2)  # [B, C, hw]

        def pool(m):
            m = m.flatten(2)  # [B, N, hw]
            return F.normalize((m @ feats.transpose(1, 2)) / (m.sum(2, keepdim=True) + 1e-3), dim=2)

        return pool(fg_masks), pool(bg_masks)

    def decode(self, f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid):
        self.calls.append(("decode", tuple(fg_hist.shape), fg_invalid.clone(), bg_invalid.clone()))
        pix = F.normalize(f4.flatten(2), dim=1)  # [B, C, HW]

        def logits(hist, invalid):
            lg = torch.einsum("bntc,bcp->bntp", hist, pix) * 8.0
            lg = lg.masked_fill(invalid[..., None], float("-inf"))
            return lg.max(2).values  # [B, N, HW]

        catch_all = torch.full((f4.shape[0], 1, pix.shape[2]), 2.0, device=pix.device)
        out = torch.cat([catch_all, logits(bg_hist, bg_invalid), logits(fg_hist, fg_invalid)], 1)
        return out.reshape(f4.shape[0], -1, *f4.shape[-2:])

    def check_limits(self, num_objects, history, height, width, streams=1):
        self.calls.append(("limits", num_objects, history, height, width, streams))
        from hodor.errors import HodorError

        if self.limits is not None and (num_objects > self.limits[0] or history > self.limits[1]):
            raise HodorError(f"limit exceeded: {num_objects} objects, {history} frames")
        if self.max_streams is not None and streams > self.max_streams:
            raise HodorError(f"{streams} videos exceed the limit of {self.max_streams}: use --max-streams")
