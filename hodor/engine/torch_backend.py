"""The PyTorch backend: the plain model behind the three-stage seam, on the CPU or a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import torch

from hodor.config import HodorConfig
from hodor.errors import HodorError


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; ``"cpu"``; ``"cuda"`` (must exist)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise HodorError(
                f"--device cuda: no CUDA GPU is usable here (torch {torch.__version__}); use --device cpu"
            )
        return torch.device("cuda")
    raise HodorError(f"unknown device {device!r}: choose cpu or cuda")


class TorchBackend:
    """Runs ``hodor.model.HodorNet`` eagerly. No limits beyond memory."""

    name = "torch"

    def __init__(self, net: torch.nn.Module, config: HodorConfig, device: torch.device) -> None:
        self.net = net.eval()
        self.config = config
        self.device = device

    @torch.inference_mode()
    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.backbone(images)

    @torch.inference_mode()
    def encode(
        self, f8: torch.Tensor, fg_masks: torch.Tensor, bg_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.encode(f8, fg_masks, bg_masks)

    @torch.inference_mode()
    def decode(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> torch.Tensor:
        return self.net.decode(f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)

    def check_limits(self, num_objects: int, history: int, height: int, width: int) -> None:
        return None


def open_torch_backend(
    checkpoint: str | Path, config: HodorConfig, device: str | None = None
) -> TorchBackend:
    """Load an official ``.pth`` checkpoint (strict keys) for ``config`` on ``device``."""
    from hodor.model import load_hodor  # the model is only needed by this backend

    dev = resolve_device(device)
    if dev.type == "cuda":
        # TF32 convolutions would drift from the fp32 reference the masks are checked against.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    net = load_hodor(checkpoint, config, device=str(dev))
    return TorchBackend(net, config, dev)
