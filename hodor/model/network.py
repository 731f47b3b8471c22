"""The HODOR network as three stages: backbone, encode, decode (docs/design.md, "Stages")."""

from __future__ import annotations

from torch import Tensor, nn

from hodor.config import ModelConfig
from hodor.model.backbone import FeatureExtractor
from hodor.model.decoder import Decoder
from hodor.model.encoder import Encoder
from hodor.model.kernel_choice import KernelImpl, SelectsKernels, check_kernels


class HodorNet(nn.Module):
    """HODOR for inference; its ``state_dict`` keys are those of the official checkpoints.

    The stages are separate methods, not ``forward``, because the runtime calls them
    at different rates (backbone per frame batch, encode/decode per frame of each video;
    several videos' frames may form one batch).

    ``kernels`` chooses what computes the soft-masked attention, the pixel->descriptor
    attention, the mask logits and the masked average pooling: ``"torch"`` (default,
    the plain-torch references of :mod:`hodor.kernels`, what export traces) or ``"triton"``
    (the fused kernels beside them); see :mod:`hodor.model.kernel_choice`.
    """

    def __init__(self, cfg: ModelConfig, kernels: KernelImpl = "torch") -> None:
        super().__init__()
        self.config = cfg
        self.feature_extractor = FeatureExtractor()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self._kernels: KernelImpl = "torch"
        self.set_kernels(kernels)

    @property
    def kernels(self) -> KernelImpl:
        """The implementation in use, ``"torch"`` or ``"triton"``; change it with :meth:`set_kernels`."""
        return self._kernels

    def set_kernels(self, impl: KernelImpl) -> HodorNet:
        """Route the four descriptor computations to ``impl`` (``"torch"`` or ``"triton"``); returns self.

        Raises ``ValueError`` for an unknown name and ``HodorError`` for ``"triton"`` where
        Triton is not installed. Where the kernels can run (CUDA, or the CPU under
        ``TRITON_INTERPRET=1``) is checked when they are launched.
        """
        check_kernels(impl)
        for module in self.modules():
            if isinstance(module, SelectsKernels):
                module.kernels = impl
        self._kernels = impl
        return self

    def set_deform_sampling(self, sampling: str) -> HodorNet:
        """How the decoder's deformable convolutions sample with the torch kernels: ``"grid"``
        (``grid_sample``, the reference, what export traces) or ``"gather"`` (bilinear corners
        gathered by ``embedding_bag``: the same function, faster on the CPU); returns self."""
        from hodor.model.deform_conv import SAMPLINGS, DeformConv2d

        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        for module in self.modules():
            if isinstance(module, DeformConv2d):
                module.sampling = sampling
        return self

    def backbone(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B, 3, H, W]`` normalised, H and W multiples of 32
        -> ``f4 [B, 256, H/4, W/4]``, ``f8 [B, 256, H/8, W/8]``."""
        return self.feature_extractor(images)

    def encode(
        self, f8: Tensor, fg_masks: Tensor, bg_masks: Tensor, fg_invalid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``f8 [B, 256, h, w]``, ``fg_masks [B, I, h, w]``, ``bg_masks [B, Qb, h, w]`` (probabilities),
        ``fg_invalid [B, I]`` bool (True: a padding object; None: none) -> ``fg_desc [B, I, 256]``,
        ``bg_desc [B, Qb, 256]``. One frame of each of B videos; a video with fewer objects is
        padded to I, and its padding changes none of its descriptors."""
        return self.encoder(f8, fg_masks, bg_masks, fg_invalid)

    def decode(
        self,
        f4: Tensor,
        f8: Tensor,
        fg_hist: Tensor,
        bg_hist: Tensor,
        fg_invalid: Tensor,
        bg_invalid: Tensor,
    ) -> Tensor:
        """``f4 [B, 256, 2h, 2w]``, ``f8 [B, 256, h, w]``, ``fg_hist [B, I, T, 256]``,
        ``bg_hist [B, Qb, T, 256]``, ``fg_invalid [B, I, T]`` and ``bg_invalid [B, Qb, T]`` bool
        (True = ignore) -> ``logits [B, 1 + Qb + I, 2h, 2w]`` (catch-all, background, objects).
        Padding (objects, history slots) is marked invalid; a padding object's logits are -inf."""
        return self.decoder(
            f4,
            f8,
            fg_hist,
            bg_hist,
            fg_invalid,
            bg_invalid,
            self.encoder.fg_query_embed,
            self.encoder.bg_query_embed,
        )

    def forward(self, *args: object) -> None:
        raise TypeError("HodorNet has no single forward pass: call backbone(), encode() or decode()")
