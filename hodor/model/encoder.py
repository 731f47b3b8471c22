"""Encoder: features at 1/8 + soft masks -> one descriptor per object and per background cell.

Descriptors start as masked averages of the features; then every layer runs
self-attention among all descriptors (background first, then objects), soft-
masked cross-attention from each descriptor to the pixels, and an FFN, with
post-normalisation (default) or pre-normalisation plus a final LayerNorm.

The self-attention is the only place where descriptors of one frame meet. A batch of videos
pads each video's objects to the largest count; ``fg_invalid`` marks the padding, and the
self-attention leaves those descriptors out as keys, so a padded batch item computes what
the video alone computes. Every other step acts on each descriptor alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hodor.config import CHANNELS, ModelConfig
from hodor.kernels.masked_avg_pool import masked_avg_pool_reference
from hodor.kernels.soft_masked_attention import soft_masked_attention_reference
from hodor.model.kernel_choice import SelectsKernels, fused_kernels
from hodor.model.position_encoding import sine_position_encoding

FFN_DIMS = 1024
# Initial per-head penalty for a pixel outside a descriptor's mask (learned afterwards).
DEFAULT_MASK_SCALES = (32.0, 32.0, 16.0, 16.0, 8.0, 8.0, 4.0, 4.0)


class DescriptorSelfAttention(nn.Module):
    """Multi-head self-attention with packed input projections (``nn.MultiheadAttention``'s keys).

    Queries and keys get the position embedding, values do not.
    """

    def __init__(self, dims: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dims, dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dims))
        self.out_proj = nn.Linear(dims, dims)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor, pos: Tensor, key_invalid: Tensor | None = None) -> Tensor:
        """``x [B, Q, C]``, ``pos [B, Q, C]``, ``key_invalid [B, Q]`` bool (True: not a key; None:
        every descriptor is one) -> ``[B, Q, C]``."""
        b, n, c = x.shape
        h = self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        with_pos = x + pos
        q = F.linear(with_pos, w_q, b_q).reshape(b, n, h, c // h).transpose(1, 2)  # [B, h, Q, D]
        k = F.linear(with_pos, w_k, b_k).reshape(b, n, h, c // h).transpose(1, 2)
        v = F.linear(x, w_v, b_v).reshape(b, n, h, c // h).transpose(1, 2)
        # Scaling q by sqrt(1/D) (a multiplication) mirrors the original's rounding.
        logits = (q * math.sqrt(1.0 / (c // h))) @ k.transpose(-2, -1)  # [B, h, Q, Q]
        if key_invalid is not None:
            # Every query keeps valid keys (the background's), so no row is left all -inf.
            logits = logits.masked_fill(key_invalid[:, None, None, :], float("-inf"))
        attn = logits.softmax(-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class SoftMaskedAttention(SelectsKernels, nn.Module):
    """Projections around the soft-masked attention (:mod:`hodor.kernels.soft_masked_attention`);
    ``scaling_factors`` are the per-head penalties."""

    def __init__(self, dims: int, num_heads: int) -> None:
        super().__init__()
        if num_heads != len(DEFAULT_MASK_SCALES):
            raise ValueError("soft-masked attention is defined for 8 heads only")
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)
        self.scaling_factors = nn.Parameter(torch.tensor(DEFAULT_MASK_SCALES))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, soft_mask: Tensor) -> Tensor:
        """``query [B, Q, C]``, ``key``/``value [B, S, C]``, ``soft_mask [B, Q, S]`` -> ``[B, Q, C]``."""
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        num_heads = self.scaling_factors.shape[0]
        if self.kernels == "triton":
            out = fused_kernels().soft_masked_attention(
                q, k, v, soft_mask, self.scaling_factors, num_heads, impl="triton"
            )
        else:
            out = soft_masked_attention_reference(q, k, v, soft_mask, self.scaling_factors, num_heads)
        return self.out_proj(out)


class EncoderLayer(nn.Module):
    def __init__(self, dims: int, num_heads: int, pre_normalize: bool) -> None:
        super().__init__()
        self.pre_normalize = pre_normalize
        self.norm1 = nn.LayerNorm(dims)
        self.self_attn = DescriptorSelfAttention(dims, num_heads)
        self.norm2 = nn.LayerNorm(dims)
        self.cross_attn = SoftMaskedAttention(dims, num_heads)
        self.norm3 = nn.LayerNorm(dims)
        # Indices 1 and 2 held ReLU and dropout in training; the keys are ffn.0.* and ffn.3.*.
        self.ffn = nn.Sequential(
            nn.Linear(dims, FFN_DIMS), nn.ReLU(), nn.Identity(), nn.Linear(FFN_DIMS, dims)
        )

    def forward(
        self,
        desc: Tensor,
        desc_pos: Tensor,
        pixels: Tensor,
        pixel_keys: Tensor,
        masks: Tensor,
        desc_invalid: Tensor | None = None,
    ) -> Tensor:
        """One layer.

        Args:
            desc: ``[B, Q, C]`` descriptors.
            desc_pos: ``[B, Q, C]`` their learned position embeddings.
            pixels: ``[B, S, C]`` features (the values).
            pixel_keys: ``[B, S, C]`` features, plus their position encoding when enabled.
            masks: ``[B, Q, S]`` soft masks.
            desc_invalid: ``[B, Q]`` bool, True for padding descriptors (left out of the
                self-attention's keys), or None.
        """
        if self.pre_normalize:
            desc = desc + self.self_attn(self.norm1(desc), desc_pos, desc_invalid)
            desc = desc + self.cross_attn(self.norm2(desc), pixel_keys, pixels, masks)
            return desc + self.ffn(self.norm3(desc))
        desc = self.norm1(desc + self.self_attn(desc, desc_pos, desc_invalid))
        desc = self.norm2(desc + self.cross_attn(desc, pixel_keys, pixels, masks))
        return self.norm3(desc + self.ffn(desc))


class Encoder(SelectsKernels, nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_bg = cfg.num_bg_descriptors
        self.use_pos_encodings = cfg.pos_encodings_in_encoder
        self.attn_layers = nn.ModuleList(
            EncoderLayer(CHANNELS, cfg.num_heads, cfg.pre_normalize) for _ in range(cfg.encoder_layers)
        )
        # Only pre-normalisation has a final norm; the Identity owns no keys.
        self.norm = nn.LayerNorm(CHANNELS) if cfg.pre_normalize else nn.Identity()
        # Learned descriptor position embeddings: one shared by all objects, one per bg cell.
        # The decoder reuses them for its keys.
        self.fg_query_embed = nn.Parameter(torch.randn(CHANNELS))
        self.bg_query_embed = nn.Parameter(torch.randn(cfg.num_bg_descriptors, CHANNELS))

    def forward(
        self, f8: Tensor, fg_masks: Tensor, bg_masks: Tensor, fg_invalid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``f8 [B, C, h, w]``, ``fg_masks [B, I, h, w]``, ``bg_masks [B, Qb, h, w]`` (probabilities),
        ``fg_invalid [B, I]`` bool (True: a padding object, whose descriptor no other one sees;
        None: no padding) -> ``fg_desc [B, I, C]``, ``bg_desc [B, Qb, C]``."""
        b, num_obj = fg_masks.shape[0], fg_masks.shape[1]
        fg_masks = fg_masks.to(f8.dtype)
        bg_masks = bg_masks.to(f8.dtype)

        masks = torch.cat((bg_masks, fg_masks), 1)  # [B, Qb+I, h, w]: background first, as in training
        if self.kernels == "triton":
            desc = fused_kernels().masked_avg_pool(f8, masks, self.num_bg, impl="triton")  # [B, Qb+I, C]
        else:
            desc = masked_avg_pool_reference(f8, masks, self.num_bg)  # [B, Qb+I, C]
        desc_pos = torch.cat(
            (
                self.bg_query_embed.unsqueeze(0).expand(b, -1, -1),
                self.fg_query_embed.expand(b, num_obj, -1),
            ),
            1,
        )
        masks = masks.flatten(2)  # [B, Qb+I, h*w]

        pixels = f8.flatten(2).transpose(1, 2)  # [B, h*w, C]
        pixel_keys = pixels
        if self.use_pos_encodings:
            pixel_keys = pixels + sine_position_encoding(f8).flatten(2).transpose(1, 2)

        desc_invalid = None
        if fg_invalid is not None:
            bg_valid = torch.zeros(b, self.num_bg, dtype=torch.bool, device=fg_invalid.device)
            desc_invalid = torch.cat((bg_valid, fg_invalid.to(torch.bool)), 1)  # [B, Qb+I]
        for layer in self.attn_layers:
            desc = layer(desc, desc_pos, pixels, pixel_keys, masks, desc_invalid)
        desc = self.norm(desc)
        return desc[:, self.num_bg :], desc[:, : self.num_bg]
