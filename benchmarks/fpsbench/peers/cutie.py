"""Cutie (package ``rf-cutie``) through ``InferenceCore.step``, as its scripting demo drives it.

The network is built from Cutie's own ``eval_config`` (composed with Hydra from the package's config
directory) and its model config (``base``: ResNet-50 pixel encoder; ``small``: ResNet-18), with the
memory settings its evaluation uses by default (``get_dataset_cfg``: every 5th frame memorised, at
most 5 memory frames, no long-term memory). ``CUTIE`` insists on loading ImageNet ResNet weights
through ``torch.utils.model_zoo``; the stand-ins are Cutie's own randomly initialised ResNets, saved
under the file names it looks for in ``resnet_model_path`` (nothing is downloaded). Frames go in at
their own size (``max_internal_size`` -1: Cutie pads them to a multiple of 16).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpsbench.peers.base import PeerSetting
from fpsbench.synthetic import SyntheticVideo
from fpsbench.systems import Unavailable, import_or_unavailable

MODEL_CONFIGS = ("base", "small")
# The file names Cutie's resnet.py downloads to (it loads them from resnet_model_path when present).
RESNET_FILES = {"resnet18": "resnet18-5c106cde.pth", "resnet50": "resnet50-19c8e357.pth"}


def fast_setting(device: torch.device) -> PeerSetting:
    """Cutie's ``amp`` (its evaluation runs the network under CUDA fp16 autocast); it has no compile."""
    if device.type != "cuda":
        raise Unavailable(
            "Cutie's fast setting is fp16 autocast on CUDA (its amp option); on the CPU only fp32 runs"
        )
    return PeerSetting("fast", "fp16 autocast (amp)", torch.float16, compiled=False)


def compose_config(model: str) -> Any:
    """Cutie's ``eval_config`` with ``model=<model>``, composed from the installed package's configs.

    Hydra keeps one global state, which SAM 2 claims when it is imported: it is set aside for the
    composition and restored after it.
    """
    cutie_pkg = import_or_unavailable("cutie", "Cutie (pip install rf-cutie)")
    from cutie.inference.utils.args_utils import get_dataset_cfg
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = Path(next(iter(cutie_pkg.__path__))) / "config"
    saved = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3.2", job_name="fps_bench"):
            cfg = compose(config_name="eval_config", overrides=[f"model={model}"])
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    get_dataset_cfg(cfg)  # lifts the default dataset's memory settings to the top, as Cutie's tools do
    return cfg


class CutieModel:
    def __init__(self, model: str, setting: PeerSetting, device: torch.device, seed: int) -> None:
        import_or_unavailable("cutie.model.cutie", "Cutie (pip install rf-cutie)")
        from cutie.model.cutie import CUTIE
        from cutie.model.utils import resnet
        from omegaconf import open_dict

        # Cutie calls the deprecated torch.cuda.amp.autocast on every frame.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"cutie\.")
        self.cfg = compose_config(model)
        self.setting, self.device = setting, device
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory(prefix="cutie-resnets-") as stand_ins:
            for name, file in RESNET_FILES.items():
                torch.save(getattr(resnet, name)(pretrained=False).state_dict(), Path(stand_ins) / file)
            with open_dict(self.cfg):
                self.cfg.model.resnet_model_path = stand_ins
            self.network = CUTIE(self.cfg).to(device).eval()
        self.steady_after = int(self.cfg.mem_every) * int(self.cfg.max_mem_frames) + 1
        self.description = (
            f"Cutie-{model} (rf-cutie, eval_config, model={model}; mem_every {self.cfg.mem_every}, "
            f"max_mem_frames {self.cfg.max_mem_frames}, long-term memory off), {setting.precision}"
        )

    def processing_size(self, video: SyntheticVideo) -> tuple[int, int]:
        return -(-video.height // 16) * 16, -(-video.width // 16) * 16

    def open_session(self, video: SyntheticVideo, frames: int, workdir: str) -> CutieSession:
        return CutieSession(self, video)


class CutieSession:
    def __init__(self, model: CutieModel, video: SyntheticVideo) -> None:
        from cutie.inference.inference_core import InferenceCore

        self.model, self.video = model, video
        self.core = InferenceCore(model.network, cfg=model.cfg)
        self.objects = [int(i) for i in np.unique(video.reference) if i != 0]
        self.t = 0

    def _frame(self) -> torch.Tensor:
        rgb = torch.from_numpy(self.video.frame(self.t)).to(self.model.device)
        return rgb.permute(2, 0, 1).float().div_(255)  # 3xHxW in [0, 1], as Cutie's demo feeds it

    def _call(self, mask: torch.Tensor | None) -> np.ndarray:
        dtype = self.model.setting.autocast
        amp = torch.autocast(self.model.device.type, dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            prob = self.core.step(self._frame(), mask, objects=self.objects if mask is not None else None)
            ids = self.core.output_prob_to_mask(prob)
        self.t += 1
        return ids.to(torch.uint8).cpu().numpy()

    def start(self) -> np.ndarray:
        return self._call(torch.from_numpy(self.video.reference).to(self.model.device).long())

    def step(self) -> np.ndarray:
        return self._call(None)

    def close(self) -> None:
        self.core.clear_memory()
