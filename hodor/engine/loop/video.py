"""What the loop keeps of one video between frames, and how it reads that video's inputs.

:class:`VideoState` is the per-video half of the loop: the objects, the descriptor ring, the
frame geometry with what follows from it (the normaliser, the background grids), the id lookup
and the frame count. The per-frame computation (:mod:`hodor.engine.loop.frame_step`) takes one
or several of these, so that :class:`~hodor.engine.loop.session.VideoSession` (one video) and
:class:`~hodor.engine.loop.batch.BatchSession` (many) run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hodor.config import HodorConfig
from hodor.engine.loop.host_memory import keep_freed_host_memory
from hodor.engine.loop.masks import background_grid, id_lookup
from hodor.engine.loop.objects import ObjectMap
from hodor.engine.loop.post_decode import ENCODER_STRIDE
from hodor.engine.loop.preprocess import FrameGeometry, FrameNormaliser, frame_geometry, reference_masks
from hodor.engine.loop.ring import DescriptorRing
from hodor.errors import HodorError

Frame = np.ndarray | torch.Tensor
"""``[H,W,3]`` uint8 RGB: a numpy array, or a tensor on the CPU (pinned, for an asynchronous
upload) or already on the session's device."""


@dataclass(frozen=True)
class Reference:
    """One frame's reference mask, ready for the loop.

    ``ids``: annotated object ids, ascending. ``user_mask [H,W]`` uint8 at the frame's
    size (shown as is). ``padded [I,Hp,Wp]`` bool: each object's resized, padded mask.
    """

    ids: tuple[int, ...]
    user_mask: torch.Tensor
    padded: torch.Tensor


class VideoState:
    """One video's state in the loop: objects, descriptor ring, frame geometry, frame count.

    The geometry (and the normaliser and background grids cut for it) is set by the first
    frame checked; every later frame must have the same size. ``frame_index`` is the index of
    the next frame; the frame step advances it.
    """

    def __init__(self, config: HodorConfig, device: torch.device, temporal_window: int) -> None:
        self.config = config
        self.device = device
        self.temporal_window = temporal_window
        self.num_bg = config.model.num_bg_descriptors
        self.num_bg_channels = config.model.num_catch_all_queries + self.num_bg
        self.objects = ObjectMap()
        self.ring = DescriptorRing(temporal_window, self.num_bg, device=device)
        self.geometry: FrameGeometry | None = None
        self.frame_index = 0
        self.normaliser: FrameNormaliser | None = None
        self.grid_full: torch.Tensor | None = None  # [Qb,Hp,Wp]
        self.grid_enc: torch.Tensor | None = None  # [Qb,Hp/8,Wp/8]
        self._lookup: tuple[tuple[int, ...], torch.Tensor] | None = None  # object ids, their id lookup
        if torch.device(device).type == "cpu":
            keep_freed_host_memory()  # each frame's large tensors reuse the last frame's pages

    def reset(self) -> None:
        """Forget the video: objects, descriptors, frame size and frame count."""
        self.objects.clear()
        self.ring.clear()
        self.geometry = None
        self.frame_index = 0
        self.normaliser = None
        self.grid_full = self.grid_enc = None
        self._lookup = None

    # ------------------------------------------------------------------ frames

    def check_frame(self, frame: Frame, index: int) -> FrameGeometry:
        """The video's geometry, after checking that ``frame`` (video index ``index``) is a
        ``[H,W,3]`` uint8 frame of its size; the first frame sets the size."""
        is_uint8 = (isinstance(frame, np.ndarray) and frame.dtype == np.uint8) or (
            isinstance(frame, torch.Tensor) and frame.dtype == torch.uint8
        )
        if not is_uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", None)
            raise HodorError(f"frames must be [H,W,3] uint8 RGB arrays, got {type(frame).__name__} {shape}")
        if self.geometry is None:
            inp = self.config.input
            self.geometry = frame_geometry(frame.shape[0], frame.shape[1], inp.min_dim, inp.max_dim)
            self.normaliser = FrameNormaliser(self.geometry, inp, self.device)
            rows, cols = self.config.model.bg_grid
            self.grid_full = background_grid(rows, cols, *self.geometry.padded, device=self.device)
            self.grid_enc = background_grid(
                rows, cols, *self.geometry.at_stride(ENCODER_STRIDE), device=self.device
            )
        elif tuple(frame.shape[:2]) != self.geometry.size:
            h, w = self.geometry.size
            raise HodorError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, but the video's frames are {w}x{h}"
            )
        return self.geometry

    def network_input(self, frames: list[Frame], first_index: int) -> torch.Tensor:
        """Frames ``[H,W,3]`` of this video (indices from ``first_index``) -> the backbone's input
        ``[B,3,Hp,Wp]`` float32 on the device; ``frames`` must not be empty."""
        for i, frame in enumerate(frames, first_index):
            self.check_frame(frame, i)
        assert self.normaliser is not None
        return self.normaliser(self._frames_on_device(frames))

    def _frames_on_device(self, frames: list[Frame]) -> torch.Tensor:
        """Frames -> ``[B,H,W,3]`` uint8, contiguous, on the device."""
        if all(isinstance(f, np.ndarray) for f in frames):
            return torch.from_numpy(np.stack(frames, 0)).to(self.device)
        tensors = [torch.from_numpy(f) if isinstance(f, np.ndarray) else f for f in frames]
        # From pinned memory the upload is asynchronous; a frame already on the device stays as is.
        tensors = [f if f.device == self.device else f.to(self.device, non_blocking=True) for f in tensors]
        return tensors[0].contiguous()[None] if len(tensors) == 1 else torch.stack(tensors, 0)

    # ------------------------------------------------------------------ references

    def prepare_reference(self, mask: np.ndarray) -> Reference:
        """Check the reference ``mask [H,W]`` given at the current frame and bring it to the network's
        input size. Call after :meth:`check_frame` of that frame."""
        geometry = self.geometry
        assert geometry is not None, "check the frame before its mask"
        mask = np.asarray(mask)
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise HodorError(
                f"a mask must be a [H,W] array of integer object ids, got {mask.dtype} {list(mask.shape)}"
            )
        if mask.shape != geometry.size:
            raise HodorError(
                f"mask at frame {self.frame_index} is {mask.shape[1]}x{mask.shape[0]}, "
                f"but the frames are {geometry.width}x{geometry.height}"
            )
        if mask.min() < 0 or mask.max() > 255:
            raise HodorError(f"mask at frame {self.frame_index} has ids outside 0..255")
        user_mask = torch.from_numpy(mask.astype(np.uint8)).to(self.device)
        ids = tuple(int(i) for i in torch.unique(user_mask).tolist() if i != 0)
        if not ids:
            raise HodorError(f"mask at frame {self.frame_index} has no object (every pixel is 0)")
        return Reference(ids=ids, user_mask=user_mask, padded=reference_masks(user_mask, ids, geometry))

    def id_lookup(self, ids: tuple[int, ...]) -> torch.Tensor:
        """The channel -> id table for ``ids``, uploaded only when the objects change."""
        if self._lookup is None or self._lookup[0] != ids:
            self._lookup = (ids, id_lookup(self.num_bg_channels, ids, self.device))
        return self._lookup[1]
