"""Strict loading of official HODOR checkpoints (``{"model": state_dict, ...}``)."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from hodor.config import HodorConfig, ModelConfig
from hodor.errors import HodorError
from hodor.model.network import HodorNet

# The first bytes of a legacy (non-zip) ``torch.save`` file: pickle protocol 2 + magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_CONFIG_HINT = (
    "the config may not match the checkpoint: pass the config.yaml it was trained with "
    "(ENCODER_LAYERS, DECODER_LAYERS, NUM_BG_DESCRIPTORS, TRANSFORMER_PRE_NORMALIZE)"
)


def _is_torch_file(path: Path) -> bool:
    """A ``torch.save`` file: a zip archive, or the legacy format's leading magic number."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as f:
        return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``"model"`` dict of an official checkpoint, on the CPU.

    Only tensors and plain containers are unpickled; anything else is refused.
    Raises ``HodorError`` for a missing or unreadable file, or one without a model dict.
    """
    path = Path(path)
    if not path.is_file():
        raise HodorError(f"checkpoint not found: {path}")
    if not _is_torch_file(path):
        raise HodorError(f"{path}: not a PyTorch checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise HodorError(
            f"{path}: the checkpoint holds objects other than tensors and plain containers{what}, "
            "which are not loaded; re-save it as {'model': state_dict}"
        ) from None
    except Exception as exc:  # a damaged archive fails in many ways, none of them the user's code
        raise HodorError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__})") from None
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise HodorError(f'{path}: not a HODOR checkpoint (no "model" dict of weights)')
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise HodorError(f'{path}: "model" entry {key!r} is not a tensor')
    return state


def check_state_dict(state: dict[str, torch.Tensor], net: torch.nn.Module, where: str) -> None:
    """Raise ``HodorError`` naming the first missing, unexpected or mis-shaped key."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise HodorError(f"{where}: weights do not fit the model, keys {', '.join(parts)}; {_CONFIG_HINT}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise HodorError(
                f"{where}: weight {key} has shape {list(state[key].shape)}, the model expects "
                f"{list(tensor.shape)}; {_CONFIG_HINT}"
            )


def hodor_from_state_dict(
    state: dict[str, torch.Tensor], cfg: HodorConfig | ModelConfig, where: str = "weights"
) -> HodorNet:
    """The network for ``cfg`` holding ``state`` (strictly checked); eval mode, no gradients, on the CPU."""
    model_cfg = cfg.model if isinstance(cfg, HodorConfig) else cfg
    # Built without storage: every tensor is replaced by the checkpoint's, so a random
    # initialisation would be wasted work and memory.
    with torch.device("meta"):
        net = HodorNet(model_cfg)
    check_state_dict(state, net, where)
    expected = net.state_dict()
    state = {k: v.to(dtype=expected[k].dtype, device="cpu") for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=True)
    net.requires_grad_(False)
    return net.eval()


def load_hodor(
    checkpoint_path: str | Path, cfg: HodorConfig | ModelConfig, device: str | torch.device = "cpu"
) -> HodorNet:
    """Build the network for ``cfg`` and load the checkpoint strictly; eval mode, no gradients."""
    state = read_state_dict(checkpoint_path)
    return hodor_from_state_dict(state, cfg, str(checkpoint_path)).to(device)
