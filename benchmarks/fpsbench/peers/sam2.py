"""SAM 2.1 (package ``sam2``) through its video predictor: ``init_state``, ``add_new_mask`` per object
at frame 0, then ``propagate_in_video``, one yielded frame per step.

The network is built by ``build_sam2_video_predictor`` from the package's own SAM 2.1 config with
no checkpoint (random initialisation; nothing is downloaded) and, for the fast setting, as its
README runs it: ``vos_optimized=True`` (``SAM2VideoPredictorVOS``: the image encoder, memory
encoder, memory attention and SAM heads under ``torch.compile(mode="max-autotune")``) inside
``torch.autocast("cuda", torch.bfloat16)``.

SAM 2 resizes every frame to a square of ``image_size`` (1024 in its configs). It runs here at its
native 1024 and at the grid's ``min_dim`` (``++model.image_size``, rounded up to a multiple of 32,
which its Hiera position embeddings need). Its public API loads the whole clip up front:
``init_state`` decodes JPEG frames from a directory and resizes and normalises them, outside the
timed frames (the engine's figures include its own pre-processing). On CUDA the clip is kept on the
host (``offload_video_to_cpu=True``), so the GPU peak is the model's and its state's, not the clip's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fpsbench.peers.base import PeerSetting, ids_from_scores
from fpsbench.synthetic import SyntheticVideo
from fpsbench.systems import Unavailable, import_or_unavailable

CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
NATIVE_SIZE = 1024
SIZE_MULTIPLE = 32


def fast_setting(device: torch.device) -> PeerSetting:
    if device.type != "cuda":
        raise Unavailable(
            "SAM 2.1's fast setting is bf16 autocast on CUDA with vos_optimized torch.compile "
            "(max-autotune); on the CPU only fp32 runs"
        )
    if not torch.cuda.is_bf16_supported():
        raise Unavailable(f"{torch.cuda.get_device_name()} does not support bfloat16")
    return PeerSetting("fast", "bf16 autocast", torch.bfloat16, compiled=True)


def grid_image_size(min_dim: int) -> int:
    return -(-min_dim // SIZE_MULTIPLE) * SIZE_MULTIPLE


class Sam2Model:
    def __init__(
        self, size: str, image_size: int, setting: PeerSetting, device: torch.device, seed: int
    ) -> None:
        import_or_unavailable("sam2.build_sam", "SAM 2 (pip install sam2)")
        from sam2.build_sam import build_sam2_video_predictor

        self.setting, self.device, self.image_size = setting, device, image_size
        torch.manual_seed(seed)
        self.predictor = build_sam2_video_predictor(
            CONFIGS[size],
            ckpt_path=None,
            device=str(device),
            hydra_overrides_extra=[f"++model.image_size={image_size}"],
            vos_optimized=setting.compiled,
        )
        p = self.predictor
        # Past this many frames its memory (mask memories, object pointers) stops growing in compute.
        self.steady_after = max(p.num_maskmem, p.max_obj_ptrs_in_encoder) + 1
        missing_ext = importlib.util.find_spec("sam2._C") is None
        self.description = (
            f"SAM 2.1 Hiera-{size} (sam2, {CONFIGS[size]}, image_size {image_size}), {setting.precision}"
            + (", vos_optimized torch.compile" if setting.compiled else "")
            + (
                "; sam2._C (CUDA extension) not built, so its small-hole filling post-processing is skipped"
                if missing_ext
                else ""
            )
        )

    def processing_size(self, video: SyntheticVideo) -> tuple[int, int]:
        return self.image_size, self.image_size

    def open_session(self, video: SyntheticVideo, frames: int, workdir: str) -> Sam2Session:
        return Sam2Session(self, video, frames, Path(workdir))


def write_jpeg_clip(video: SyntheticVideo, frames: int, directory: Path) -> Path:
    """The clip as SAM 2's loader reads it: ``<index>.jpg`` files in a directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        Image.fromarray(video.frame(t)).save(directory / f"{t:05d}.jpg", quality=95)
    return directory


class Sam2Session:
    def __init__(self, model: Sam2Model, video: SyntheticVideo, frames: int, workdir: Path) -> None:
        self.model = model
        self.objects = [int(i) for i in np.unique(video.reference) if i != 0]
        clip = write_jpeg_clip(video, frames, workdir / f"sam2-clip-{video.height}x{video.width}-{frames}")
        self._quiet = io.StringIO()  # its own tqdm bars would tangle with the benchmark's
        with contextlib.redirect_stderr(self._quiet):
            self.state = model.predictor.init_state(
                video_path=str(clip), offload_video_to_cpu=model.device.type == "cuda"
            )
        self.reference = video.reference
        self._frames = None

    def _amp(self) -> contextlib.AbstractContextManager:
        dtype = self.model.setting.autocast
        return torch.autocast(self.model.device.type, dtype) if dtype else contextlib.nullcontext()

    def _next(self) -> np.ndarray:
        with contextlib.redirect_stderr(self._quiet), self._amp():
            _, obj_ids, masks = next(self._frames)  # masks [N, 1, H, W] logits at the video's size
            return ids_from_scores(masks[:, 0], list(obj_ids))

    def start(self) -> np.ndarray:
        predictor = self.model.predictor
        with contextlib.redirect_stderr(self._quiet), self._amp(), torch.inference_mode():
            for obj in self.objects:
                predictor.add_new_mask(self.state, frame_idx=0, obj_id=obj, mask=self.reference == obj)
            self._frames = predictor.propagate_in_video(self.state)
        return self._next()

    def step(self) -> np.ndarray:
        return self._next()

    def close(self) -> None:
        self.model.predictor.reset_state(self.state)
        self.state = None
