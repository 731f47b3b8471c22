"""The per-video loop (docs/design.md, "The per-video loop"): references in, one id mask per frame out.

Internal state (descriptors, the probability maps they are encoded from) follows the
official pipeline exactly. Outputs differ deliberately in two ways: a frame with a
reference shows the user's mask exactly for the objects it annotates, and frames
before the first reference are all-zero masks at the frame's size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from hodor.engine.backends.base import Backend
from hodor.engine.loop.masks import background_grid, id_lookup, resample
from hodor.engine.loop.objects import ObjectMap
from hodor.engine.loop.post_decode import ENCODER_STRIDE, FrameReferences, masks_from_logits
from hodor.engine.loop.preprocess import FrameGeometry, FrameNormaliser, frame_geometry, reference_masks
from hodor.engine.loop.ring import DescriptorRing
from hodor.errors import HodorError

DEFAULT_TEMPORAL_WINDOW = 7
DEFAULT_CHUNK = 16

Frame = np.ndarray | torch.Tensor
"""``[H,W,3]`` uint8 RGB: a numpy array, or a tensor on the CPU (pinned, for an asynchronous
upload) or already on the session's device."""


class TinyObjectWarning(UserWarning):
    """A reference object vanished at the encoder's resolution and is not tracked."""


@dataclass(frozen=True)
class _Reference:
    """One frame's reference mask, ready for the loop.

    ``ids``: annotated object ids, ascending. ``user_mask [H,W]`` uint8 at the frame's
    size (shown as is). ``padded [I,Hp,Wp]`` bool: each object's resized, padded mask.
    """

    ids: tuple[int, ...]
    user_mask: torch.Tensor
    padded: torch.Tensor


class VideoSession:
    """Segments the objects of one video, frame by frame, from reference masks.

    ``step(frame, mask)`` for streams; ``run(frames, masks)`` for a whole clip, with
    the backbone batched over ``chunk`` frames. Frames are ``[H,W,3]`` uint8 RGB
    numpy arrays (or tensors, see :data:`Frame`), all the same size; masks ``[H,W]``
    integer arrays of object ids (0 = background). A mask adds the objects it contains
    (or re-annotates known ones) at its frame.

    ``step`` and ``run`` return numpy arrays, so they wait for each frame's result.
    ``step_device`` and ``run_device`` return the same masks as uint8 tensors on the
    backend's device without waiting for them: on a GPU the next frame's work is queued
    while a consumer downloads the last mask. Between frames without a reference mask
    nothing in the loop waits for the device (nor uploads anything but the frame).
    """

    def __init__(
        self,
        backend: Backend,
        temporal_window: int = DEFAULT_TEMPORAL_WINDOW,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        if temporal_window < 1:
            # With no past frame in the window nothing carries an object from one frame to the next.
            raise HodorError(f"temporal window must be >= 1, got {temporal_window}")
        if chunk < 1:
            raise HodorError(f"chunk must be >= 1, got {chunk}")
        self.backend = backend
        self.config = backend.config
        self.device = backend.device
        self.temporal_window = temporal_window
        self.chunk = chunk
        self._num_bg = self.config.model.num_bg_descriptors
        self._num_bg_channels = self.config.model.num_catch_all_queries + self._num_bg
        self.objects = ObjectMap()
        self.ring = DescriptorRing(temporal_window, self._num_bg, device=self.device)
        self.geometry: FrameGeometry | None = None
        self.frame_index = 0  # index of the next frame
        self._normaliser: FrameNormaliser | None = None
        self._grid_full: torch.Tensor | None = None  # [Qb,Hp,Wp]
        self._grid_enc: torch.Tensor | None = None  # [Qb,Hp/8,Wp/8]
        self._lookup: tuple[tuple[int, ...], torch.Tensor] | None = None  # object ids, their id lookup

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Forget the video: objects, descriptors, frame size and frame count."""
        self.objects.clear()
        self.ring.clear()
        self.geometry = None
        self.frame_index = 0
        self._normaliser = None
        self._grid_full = self._grid_enc = None
        self._lookup = None

    def step(self, frame: Frame, mask: np.ndarray | None = None) -> np.ndarray:
        """Process the next frame ``[H,W,3]`` uint8 RGB (and its reference ``mask [H,W]``, if any)
        -> id mask ``[H,W]`` uint8."""
        return self.step_device(frame, mask).cpu().numpy()

    def step_device(self, frame: Frame, mask: np.ndarray | None = None) -> torch.Tensor:
        """:meth:`step`, but the id mask ``[H,W]`` uint8 stays a tensor on the backend's device and
        the host does not wait for it.

        The tensor is new for each frame (the session never writes to it again). It is produced
        on the current CUDA stream: a consumer on another stream must wait for an event recorded
        after this call (and ``record_stream`` the tensor) before reading it. A ``frame`` given as
        a pinned CPU tensor is uploaded asynchronously: keep it unchanged until then too.
        """
        return self._process(frame, mask, features=None)

    def run(
        self, frames: Iterable[Frame], masks: Mapping[int, np.ndarray] | None = None
    ) -> Iterator[np.ndarray]:
        """Process a clip from its first frame (the session is reset): yields one id mask per frame.

        ``masks`` maps frame index -> reference mask. The backbone runs over ``chunk``
        frames at a time and only those frames' features are held.
        """
        for ids in self.run_device(frames, masks):
            yield ids.cpu().numpy()

    def run_device(
        self, frames: Iterable[Frame], masks: Mapping[int, np.ndarray] | None = None
    ) -> Iterator[torch.Tensor]:
        """:meth:`run`, yielding each id mask ``[H,W]`` uint8 as a tensor on the backend's device
        without waiting for it (as :meth:`step_device`)."""
        self.reset()
        masks = dict(masks or {})
        for t in masks:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
                raise HodorError(f"mask frame indices must be integers >= 0, got {t!r}")
        first_reference = min(masks) if masks else None
        frame_iter = iter(frames)
        while chunk := list(islice(frame_iter, self.chunk)):
            start = self.frame_index
            needs_features = [
                first_reference is not None and start + i >= first_reference for i in range(len(chunk))
            ]
            needed = [f for f, need in zip(chunk, needs_features, strict=True) if need]
            features = self._backbone(needed, start + needs_features.index(True) if needed else start)
            k = 0
            for i, frame in enumerate(chunk):
                feats = None
                if needs_features[i]:
                    feats = (features[0][k : k + 1], features[1][k : k + 1])
                    k += 1
                yield self._process(frame, masks.get(start + i), feats)
            # Drop this chunk's features (and the views into them) before the next backbone call.
            del features, feats, chunk
        unused = sorted(t for t in masks if t >= self.frame_index)
        if unused:
            raise HodorError(
                f"a mask is bound to frame {unused[0]}, but the clip has only {self.frame_index} frames"
            )

    # ------------------------------------------------------------------ the loop

    def _check_frame(self, frame: Frame, index: int) -> FrameGeometry:
        is_uint8 = (isinstance(frame, np.ndarray) and frame.dtype == np.uint8) or (
            isinstance(frame, torch.Tensor) and frame.dtype == torch.uint8
        )
        if not is_uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", None)
            raise HodorError(f"frames must be [H,W,3] uint8 RGB arrays, got {type(frame).__name__} {shape}")
        if self.geometry is None:
            inp = self.config.input
            self.geometry = frame_geometry(frame.shape[0], frame.shape[1], inp.min_dim, inp.max_dim)
            self._normaliser = FrameNormaliser(self.geometry, inp, self.device)
            rows, cols = self.config.model.bg_grid
            self._grid_full = background_grid(rows, cols, *self.geometry.padded, device=self.device)
            self._grid_enc = background_grid(
                rows, cols, *self.geometry.at_stride(ENCODER_STRIDE), device=self.device
            )
        elif tuple(frame.shape[:2]) != self.geometry.size:
            h, w = self.geometry.size
            raise HodorError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, but the video's frames are {w}x{h}"
            )
        return self.geometry

    def _frames_on_device(self, frames: list[Frame]) -> torch.Tensor:
        """Frames -> ``[B,H,W,3]`` uint8, contiguous, on the backend's device."""
        if all(isinstance(f, np.ndarray) for f in frames):
            return torch.from_numpy(np.stack(frames, 0)).to(self.device)
        tensors = [torch.from_numpy(f) if isinstance(f, np.ndarray) else f for f in frames]
        # From pinned memory the upload is asynchronous; a frame already on the device stays as is.
        tensors = [f if f.device == self.device else f.to(self.device, non_blocking=True) for f in tensors]
        return tensors[0].contiguous()[None] if len(tensors) == 1 else torch.stack(tensors, 0)

    def _backbone(self, frames: list[Frame], first_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``[H,W,3]`` (video indices from ``first_index``) -> ``f4 [B,256,Hp/4,Wp/4]``,
        ``f8 [B,256,Hp/8,Wp/8]``; B may be 0."""
        if not frames:
            return torch.empty(0), torch.empty(0)
        self._check_frame(frames[0], first_index)
        for i, frame in enumerate(frames[1:], first_index + 1):
            self._check_frame(frame, i)
        assert self._normaliser is not None
        return self.backend.backbone(self._normaliser(self._frames_on_device(frames)))

    def _prepare_reference(self, mask: np.ndarray, geometry: FrameGeometry) -> _Reference:
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
        return _Reference(ids=ids, user_mask=user_mask, padded=reference_masks(user_mask, ids, geometry))

    def _id_lookup(self, ids: tuple[int, ...]) -> torch.Tensor:
        """The channel -> id table for ``ids``, uploaded only when the objects change."""
        if self._lookup is None or self._lookup[0] != ids:
            self._lookup = (ids, id_lookup(self._num_bg_channels, ids, self.device))
        return self._lookup[1]

    @torch.inference_mode()
    def _process(
        self,
        frame: Frame,
        mask: np.ndarray | None,
        features: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        t = self.frame_index
        geometry = self._check_frame(frame, t)
        reference = self._prepare_reference(mask, geometry) if mask is not None else None
        had_objects = self.objects.has_objects

        if not had_objects and reference is None:
            self.frame_index += 1
            return torch.zeros(geometry.size, dtype=torch.uint8, device=self.device)

        if features is None:
            features = self._backbone([frame], t)
        f4, f8 = features

        kept: tuple[tuple[int, ...], torch.Tensor] | None = None
        if reference is not None:
            kept = self._encode_references(t, f8, reference, first_objects=not had_objects)

        if had_objects:
            out = self._propagate(t, f4, f8, reference, kept)
        else:
            # First reference of the video: nothing to decode yet; the output is the reference.
            assert reference is not None
            out = reference.user_mask
        self.frame_index += 1
        return out

    def _encode_references(
        self, t: int, f8: torch.Tensor, reference: _Reference, first_objects: bool
    ) -> tuple[tuple[int, ...], torch.Tensor]:
        """Encode the objects annotated at frame ``t``; return the kept ones' ids (ascending) and
        padded masks ``[R,Hp,Wp]`` bool.

        The background grid is cut at full padded resolution and cleared wherever any
        annotated object is, including objects about to be dropped as too small.
        """
        geometry = self.geometry
        assert geometry is not None and self._grid_full is not None
        padded = reference.padded  # [I,Hp,Wp] bool
        background = padded.logical_not().all(0)
        grid = torch.where(background[None], self._grid_full, torch.zeros_like(self._grid_full))
        stacked = torch.cat([grid, padded.to(torch.float32)], 0)[None]
        small = resample(stacked, geometry.at_stride(ENCODER_STRIDE))[0]  # [Qb+I,h,w]
        bg_small, fg_small = small[: self._num_bg], small[self._num_bg :]

        keep = (fg_small.flatten(1) > 0.5).any(1).tolist()
        kept_ids = tuple(i for i, k in zip(reference.ids, keep, strict=True) if k)
        dropped = [i for i, k in zip(reference.ids, keep, strict=True) if not k]
        if dropped:
            if first_objects and not kept_ids:
                raise HodorError(
                    f"every object of the first reference mask (frame {t}, ids {dropped}) is too small "
                    "to track at this resolution (no pixel left at 1/8 scale); "
                    "give larger masks or raise --min-dim"
                )
            warnings.warn(
                f"frame {t}: object(s) {dropped} too small to track at this resolution "
                f"(no pixel left at 1/8 scale); ignored",
                TinyObjectWarning,
                stacklevel=2,
            )
        keep_t = torch.tensor(keep, dtype=torch.bool).to(self.device)
        if not kept_ids:
            return kept_ids, padded[keep_t]

        self.backend.check_limits(len(kept_ids), 1, *geometry.padded)
        fg_desc, bg_desc = self.backend.encode(
            f8, fg_small[keep_t][None].contiguous(), bg_small[None].contiguous()
        )
        self.ring.put_objects(t, kept_ids, fg_desc[0])
        if first_objects:
            self.ring.put_background(t, bg_desc[0])
        self.objects.add(kept_ids)
        return kept_ids, padded[keep_t]

    def _propagate(
        self,
        t: int,
        f4: torch.Tensor,
        f8: torch.Tensor,
        reference: _Reference | None,
        kept: tuple[tuple[int, ...], torch.Tensor] | None,
    ) -> torch.Tensor:
        """Decode frame ``t`` from the history, re-encode every object; return the id mask ``[H,W]``.

        ``reference``: frame ``t``'s reference mask, if any, and ``kept`` what
        :meth:`_encode_references` kept of it.
        """
        geometry = self.geometry
        assert geometry is not None and self._grid_enc is not None
        history = self.ring.history(t)
        ids = history.ids
        self.backend.check_limits(len(ids), history.length, *geometry.padded)
        logits = self.backend.decode(f4, f8, history.fg, history.bg, history.fg_invalid, history.bg_invalid)
        references = None
        if reference is not None:
            assert kept is not None
            kept_ids, kept_masks = kept
            references = FrameReferences(
                override_slots=tuple(ids.index(i) for i in kept_ids),
                override_masks=kept_masks,
                shown_slots=tuple(ids.index(i) for i in reference.ids if i in ids),
                user_mask=reference.user_mask,
            )
        decoded = masks_from_logits(
            logits,
            self._num_bg_channels,
            self._id_lookup(ids),
            self._grid_enc,
            geometry.resized,
            geometry.size,
            references,
        )
        self.backend.check_limits(len(ids), 1, *geometry.padded)
        fg_desc, bg_desc = self.backend.encode(
            f8, decoded.fg[None].contiguous(), decoded.bg[None].contiguous()
        )
        self.ring.put_objects(t, ids, fg_desc[0])
        self.ring.put_background(t, bg_desc[0])
        return decoded.id_mask
