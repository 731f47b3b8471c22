"""Decoder: features + descriptor history -> mask logits at 1/4.

Every layer refines the 1/8 map with a deformable convolution and lets each
pixel attend to the whole descriptor history; the map is then upsampled to 1/4,
fused with the backbone's 1/4 features, and every descriptor is matched against
it (best over its history). A convolutional head adds one catch-all map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hodor.config import CHANNELS, ModelConfig
from hodor.kernels.mask_logits import mask_logits_reference
from hodor.kernels.pixel_descriptor_attention import pixel_descriptor_attention_reference
from hodor.model.deform_conv import DeformConvBlock
from hodor.model.kernel_choice import SelectsKernels, fused_kernels
from hodor.model.position_encoding import sine_position_encoding

REDUCED_4X = 64  # channels the 1/4 backbone features are reduced to before fusion


def _conv_relu_gn(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    """Bias-free conv -> ReLU -> GroupNorm(8) (keys ``.0.weight``, ``.2.weight``, ``.2.bias``)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.ReLU(),
        nn.GroupNorm(8, out_ch),
    )


class PixelQueryProjection(nn.Module):
    """The decoder's cross-attention owns only a query projection; keys and values are
    projected per descriptor kind (foreground/background) by the layer."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dims, dims)


class DecoderLayer(SelectsKernels, nn.Module):
    def __init__(self, dims: int, num_heads: int, pre_normalize: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pre_normalize = pre_normalize
        self.self_attn_conv_substitute = nn.Sequential(
            DeformConvBlock(dims), nn.ReLU(), nn.GroupNorm(16, dims)
        )
        self.k_proj_fg = nn.Linear(dims, dims)
        self.k_proj_bg = nn.Linear(dims, dims)
        self.v_proj_fg = nn.Linear(dims, dims)
        self.v_proj_bg = nn.Linear(dims, dims)
        self.norm1 = nn.Identity() if pre_normalize else nn.LayerNorm(dims)
        self.cross_attn = PixelQueryProjection(dims)
        self.norm2 = nn.LayerNorm(dims)
        self.fc1 = nn.Linear(dims, dims)
        self.fc2 = nn.Linear(dims, dims)

    def forward(
        self,
        fmap: Tensor,
        pixel_pos: Tensor | None,
        fg: Tensor,
        bg: Tensor,
        fg_pos: Tensor,
        bg_pos: Tensor,
        invalid: Tensor,
    ) -> Tensor:
        """One layer.

        Args:
            fmap: ``[B, C, h, w]``.
            pixel_pos: ``[B, h*w, C]`` position encoding of the pixels, or None.
            fg: ``[B, I*T, C]`` object descriptor history; ``fg_pos`` its embedding, same shape.
            bg: ``[B, Qb*T, C]`` background descriptor history; ``bg_pos`` likewise.
            invalid: ``[B, I*T + Qb*T]`` bool, objects first.

        Returns:
            ``[B, C, h, w]``.
        """
        b, c, h, w = fmap.shape
        fmap = fmap + self.self_attn_conv_substitute(fmap)
        pixels = fmap.flatten(2).transpose(1, 2)  # [B, h*w, C]

        query = pixels if pixel_pos is None else pixels + pixel_pos
        key = torch.cat((self.k_proj_fg(fg + fg_pos), self.k_proj_bg(bg + bg_pos)), 1)
        value = torch.cat((self.v_proj_fg(fg), self.v_proj_bg(bg)), 1)
        query = self.cross_attn.q_proj(query)
        if self.kernels == "triton":
            attn = fused_kernels().pixel_descriptor_attention(
                query, key, value, invalid, self.num_heads, impl="triton"
            )
        else:
            attn = pixel_descriptor_attention_reference(query, key, value, invalid, self.num_heads)

        pixels = self.norm1(pixels + attn)
        ffn = self.fc2(F.relu(self.fc1(pixels)))
        pixels = pixels + self.norm2(ffn) if self.pre_normalize else self.norm2(pixels + ffn)
        return pixels.transpose(1, 2).reshape(b, c, h, w)


class Decoder(SelectsKernels, nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.use_pos_encodings = cfg.pos_encodings_in_decoder
        self.attn_layers = nn.ModuleList(
            DecoderLayer(CHANNELS, cfg.num_heads, cfg.pre_normalize) for _ in range(cfg.decoder_layers)
        )
        self.conv_4x_reduce = _conv_relu_gn(CHANNELS, REDUCED_4X, 1)
        self.conv_4x = _conv_relu_gn(CHANNELS, CHANNELS, 3)
        self.norm_fmap = nn.GroupNorm(1, CHANNELS) if cfg.pre_normalize else nn.Identity()
        self.instance_query_proj = nn.Linear(CHANNELS, CHANNELS)
        self.bg_query_proj = nn.Linear(CHANNELS, CHANNELS)
        # In every official checkpoint but never used by the official forward pass.
        self.fmap_proj_4x = _conv_relu_gn(CHANNELS, CHANNELS, 1)
        self.catch_all_conv = nn.Sequential(
            nn.Conv2d(CHANNELS, CHANNELS // 2, 3, padding=1, bias=False),
            nn.GroupNorm(8, CHANNELS // 2),
            nn.ReLU(),
            nn.Conv2d(CHANNELS // 2, 1, 1, bias=False),
        )

    def forward(
        self,
        f4: Tensor,
        f8: Tensor,
        fg_hist: Tensor,
        bg_hist: Tensor,
        fg_invalid: Tensor,
        bg_invalid: Tensor,
        fg_embed: Tensor,
        bg_embed: Tensor,
    ) -> Tensor:
        """Mask logits.

        Args:
            f4: ``[B, C, 2h, 2w]``, f8: ``[B, C, h, w]`` backbone features.
            fg_hist: ``[B, I, T, C]``, bg_hist: ``[B, Qb, T, C]`` descriptor history.
            fg_invalid: ``[B, I, T]``, bg_invalid: ``[B, Qb, T]`` bool, True = ignore.
            fg_embed: ``[C]``, bg_embed: ``[Qb, C]`` the encoder's descriptor embeddings.

        Returns:
            ``[B, 1 + Qb + I, 2h, 2w]``: catch-all, background, objects.
        """
        fg_hist = fg_hist.to(f8.dtype)
        bg_hist = bg_hist.to(f8.dtype)
        b, num_obj, t, c = fg_hist.shape
        fg = fg_hist.flatten(1, 2)  # [B, I*T, C]
        bg = bg_hist.flatten(1, 2)  # [B, Qb*T, C]
        fg_pos = fg_embed.expand(b, num_obj * t, c)
        bg_pos = bg_embed[None, :, None, :].expand(b, -1, t, -1).flatten(1, 2)
        invalid = torch.cat((fg_invalid.flatten(1), bg_invalid.flatten(1)), 1)

        pixel_pos = None
        if self.use_pos_encodings:
            pixel_pos = sine_position_encoding(f8).flatten(2).transpose(1, 2)

        fmap = f8
        for layer in self.attn_layers:
            fmap = layer(fmap, pixel_pos, fg, bg, fg_pos, bg_pos, invalid)

        fmap = F.interpolate(self.norm_fmap(fmap), scale_factor=2.0, mode="bilinear", align_corners=False)
        # The reduced 1/4 features are added to the first 64 channels only.
        fused = fmap[:, :REDUCED_4X] + self.conv_4x_reduce(f4)
        fmap = self.conv_4x(torch.cat((fused, fmap[:, REDUCED_4X:]), 1))

        desc = torch.cat((self.bg_query_proj(bg_hist), self.instance_query_proj(fg_hist)), 1)
        desc_invalid = torch.cat((bg_invalid, fg_invalid), 1)
        catch_all = self.catch_all_conv(fmap)
        if self.kernels == "triton":
            # The kernel writes the logits after the catch-all map into one output: no concatenation.
            return fused_kernels().mask_logits(fmap, desc, desc_invalid, catch_all, impl="triton")
        return mask_logits_reference(fmap, desc, desc_invalid, catch_all)  # [B, 1+Qb+I, 2h, 2w]
