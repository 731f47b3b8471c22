"""Swin Transformer (Tiny) backbone, inference only, with the official parameter names.

Patch embedding 4x4 + LayerNorm; four stages of (shifted-)window attention
blocks, window 7, depths 2/2/6/2, heads 3/6/12/24, patch merging between stages;
a LayerNorm on each stage's output. Feature maps travel as ``[B, H, W, C]``
inside the stages. Window padding and the shifted-window mask are derived from
the input's shape on every call, so one traced graph serves every size.

Two forms of the same arithmetic, bit for bit the same values
(``tests/test_model_swin.py``): the default pads, rolls and transposes the map
into windows as the original does; with :meth:`SwinTransformer.gather_windows`
each block moves its tokens into windows and back with one index gather each
way (:func:`window_indices`), and patch merging is one transposition; in the
last two stages, where padding to whole windows adds the most tokens, the
attention's projections also skip the padded tokens. The exporter traces the
second: graph runtimes run a pad, a roll and a crop as several passes over the
map each, through slow generic kernels, and a gather as one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EMBED_DIM = 96
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (3, 6, 12, 24)
WINDOW = 7
MASK_VALUE = -100.0  # what the original adds between tokens from different regions
# The first stage (0-based) whose exported blocks project the map's tokens only (gather_windows).
PROJECT_MAP_TOKENS_FROM = 2


def relative_position_index(window: int) -> Tensor:
    """``[window^2, window^2]`` index into the relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 2]
    rel = rel + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, Hp, Wp, C]`` (Hp, Wp multiples of ``window``) -> ``[B * nW, window^2, C]``, windows row-major."""
    b, hp, wp, c = x.shape
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows: Tensor, window: int, b: int, hp: int, wp: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, window^2, C]`` -> ``[B, Hp, Wp, C]``."""
    c = windows.shape[-1]
    x = windows.reshape(b, hp // window, wp // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``. Written with floor division alone: on the
    exporter's symbolic sizes a remainder (``%``) becomes an expression its solver simplifies
    slowly, and every later size of the backbone is built on it (the backbone's export took
    several times as long)."""
    return (n + multiple - 1) // multiple * multiple


def whole_windows(n: int, window: int) -> int:
    """``n`` rounded up to a whole number of windows: the size a map is padded to."""
    return round_up(n, window)


def window_indices(h: int, w: int, window: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The (shifted-)window partition of an ``h x w`` map of tokens as two indices.

    ``gather [nW * window^2]``: for each window token, in :func:`window_partition`'s order over the
    map zero-padded to whole windows and rolled by ``-shift``, the index ``y * w + x`` of the map
    token it holds, or ``h * w`` where it holds padding (the caller appends a row of zeros there).
    ``scatter [h * w]``: for each map token, its place among the window tokens; it undoes the
    partition, the roll and the padding. Built from shapes with tensor ops only (the exporter
    cannot take ``%`` of a symbolic size, hence the wrap by comparison).
    """
    hp, wp = whole_windows(h, window), whole_windows(w, window)

    def wrapped(i: Tensor, n: int) -> Tensor:  # i in [0, 2n) -> i mod n
        return torch.where(i >= n, i - n, i)

    def in_windows(t: Tensor) -> Tensor:  # [hp, wp] -> window order, flat
        return window_partition(t[None, :, :, None], window).reshape(-1)

    rows = in_windows(torch.arange(hp, device=device)[:, None].expand(hp, wp))
    cols = in_windows(torch.arange(wp, device=device)[None, :].expand(hp, wp))
    src_y, src_x = wrapped(rows + shift, hp), wrapped(cols + shift, wp)
    gather = torch.where((src_y < h) & (src_x < w), src_y * w + src_x, h * w)
    # Map token (y, x) sits at (y - shift, x - shift) of the rolled map, wrapped.
    ys = wrapped(torch.arange(h, device=device) + (hp - shift), hp)
    xs = wrapped(torch.arange(w, device=device) + (wp - shift), wp)
    window_of = (ys // window)[:, None] * (wp // window) + (xs // window)[None, :]
    within = (ys % window)[:, None] * window + (xs % window)[None, :]
    return gather, (window_of * (window * window) + within).reshape(-1)


def shifted_window_mask(hp: int, wp: int, window: int, shift: int, like: Tensor) -> Tensor:
    """Attention bias that keeps a shifted window from mixing regions that the roll made adjacent.

    The padded map (``hp x wp``) is cut into 3 bands per axis — ``[0, hp-window)``,
    ``[hp-window, hp-shift)``, ``[hp-shift, hp)`` — and tokens of different regions
    get ``-100``, as in the original. Computed from shapes with tensor ops only.

    Returns:
        ``[nW, window^2, window^2]`` in ``like``'s dtype and device.
    """

    def bands(n: int) -> Tensor:
        i = torch.arange(n, device=like.device)
        return (i >= n - window).long() + (i >= n - shift).long()  # 0, 1, 2

    region = bands(hp)[:, None] * 3 + bands(wp)[None, :]  # [hp, wp]
    region = window_partition(region[None, :, :, None], window).squeeze(-1)  # [nW, N]
    different = region[:, None, :] != region[:, :, None]  # [nW, N, N]
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(different, zero + MASK_VALUE, zero)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int = WINDOW) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Part of the official checkpoints, so it is a persistent buffer loaded like a weight.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x [B*nW, N, C]``, ``mask [nW, N, N]`` or None -> ``[B*nW, N, C]``."""
        return self.proj(self.attend(self.qkv(x), mask))

    def attend(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        """Attention between the projections: ``qkv [B*nW, N, 3C]`` -> ``[B*nW, N, C]`` (before proj)."""
        bw, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B*nW, heads, N, D]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B*nW, heads, N, N]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(-1, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.reshape(-1, self.num_heads, n, n)
        attn = attn.softmax(-1)
        return (attn @ v).transpose(1, 2).reshape(bw, n, c)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, both residual, LayerNorm before each."""

    def __init__(self, dim: int, num_heads: int, shift: int, window: int = WINDOW) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(
        self,
        x: Tensor,
        shift_mask: Tensor,
        indices: tuple[Tensor, Tensor] | None = None,
        project_map_tokens: bool = False,
    ) -> Tensor:
        """``x [B, H, W, C]``, ``shift_mask [nW, N, N]`` (used by shifted blocks) -> ``[B, H, W, C]``.

        With ``indices`` (:func:`window_indices` for this block's shift) the tokens move into
        windows and back by gathers instead of pad, roll, transpositions and crop: the same values.
        With ``project_map_tokens`` as well, ``qkv`` and ``proj`` run on the map's tokens only, not
        on the padding (the same values again); fewer products, but rows three times as wide to
        gather, which pays where the padding is a large share of the tokens.
        """
        b, h, w, c = x.shape
        win = self.window
        y = self.norm1(x)
        if indices is not None:
            gather, scatter = indices
            mask = shift_mask if self.shift > 0 else None
            y = y.reshape(b, h * w, c)
            if project_map_tokens:
                # A padded token is zero after the norm, so its qkv is the bias: appended as its
                # row, and proj runs after the scatter, on the map's tokens only.
                rows = torch.cat([self.attn.qkv(y), self.attn.qkv.bias.reshape(1, 1, -1).expand(b, 1, -1)], 1)
                y = self.attn.attend(torch.index_select(rows, 1, gather).reshape(-1, win * win, 3 * c), mask)
                y = self.attn.proj(torch.index_select(y.reshape(b, -1, c), 1, scatter))
            else:
                rows = torch.cat([y, y.new_zeros(b, 1, c)], 1)  # the padding's token
                y = self.attn(torch.index_select(rows, 1, gather).reshape(-1, win * win, c), mask)
                y = torch.index_select(y.reshape(b, -1, c), 1, scatter)
            x = x + y.reshape(b, h, w, c)
            return x + self.mlp(self.norm2(x))
        # Zero-pad the normalised map to whole windows; padded tokens take part in the
        # attention unmasked (as in the original) and are cropped before the residual.
        y = F.pad(y, (0, 0, 0, whole_windows(w, win) - w, 0, whole_windows(h, win) - h))
        hp, wp = y.shape[1], y.shape[2]
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, win), shift_mask if self.shift > 0 else None)
        y = window_merge(y, win, b, hp, wp)
        if self.shift > 0:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :h, :w, :]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhoods -> LayerNorm -> linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)
        self.by_transposition = False  # see SwinTransformer.gather_windows

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, ceil(H/2), ceil(W/2), 2C]``."""
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, round_up(w, 2) - w, 0, round_up(h, 2) - h))
        if self.by_transposition:
            # [B, H/2, dy, W/2, dx, C] -> channels ordered (dx, dy, C), as the slices below.
            h2, w2 = x.shape[1] // 2, x.shape[2] // 2
            x = x.reshape(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
        else:
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then (optionally) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, downsample: bool, window: int = WINDOW) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, shift=0 if i % 2 == 0 else self.shift, window=window)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.by_gathers = False  # see SwinTransformer.gather_windows
        self.project_map_tokens = False  # with by_gathers: see SwinBlock.forward

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, H, W, C]`` -> (stage output ``[B, H, W, C]``, input of the next stage)."""
        win = self.window
        h, w = x.shape[1], x.shape[2]
        mask = shifted_window_mask(whole_windows(h, win), whole_windows(w, win), win, self.shift, like=x)
        plain = shifted = None
        if self.by_gathers:  # one pair of indices per shift, shared by the stage's blocks
            plain = window_indices(h, w, win, 0, x.device)
            shifted = window_indices(h, w, win, self.shift, x.device)
        for block in self.blocks:
            x = block(x, mask, shifted if block.shift > 0 else plain, self.project_map_tokens)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int = 4, in_ch: int = 3, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, H/4, W/4, C]`` (channels last)."""
        p = self.patch
        x = F.pad(x, (0, round_up(x.shape[3], p) - x.shape[3], 0, round_up(x.shape[2], p) - x.shape[2]))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Swin-Tiny; ``forward`` returns the four normalised stage outputs ``[B, C_i, H/2^(i+2), W/2^(i+2)]``.

    ``C_i`` = 96, 192, 384, 768.
    """

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        dims = [EMBED_DIM * 2**i for i in range(len(DEPTHS))]
        self.layers = nn.ModuleList(
            SwinStage(dims[i], DEPTHS[i], NUM_HEADS[i], downsample=i < len(DEPTHS) - 1)
            for i in range(len(DEPTHS))
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.num_features = dims

    def gather_windows(self, enabled: bool = True) -> None:
        """Move tokens into windows and back by index gathers, and merge patches by one
        transposition (``True``), or as the original does (``False``, the default). The values
        are the same either way; the exporter traces the gathers (see the module's docstring).

        In the last two stages (the 1/16 and 1/32 maps, where padding to whole windows adds the
        most tokens: 21 % and 45 % for a 480x854 frame, against 6 % and 10 % in the first two) the
        blocks' ``qkv`` and ``proj`` also skip the padding; in the first two that was slower."""
        for i, stage in enumerate(self.layers):
            stage.by_gathers = enabled
            stage.project_map_tokens = enabled and i >= PROJECT_MAP_TOKENS_FROM
            if stage.downsample is not None:
                stage.downsample.by_transposition = enabled

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            norm = getattr(self, f"norm{i}")
            outs.append(norm(out).permute(0, 3, 1, 2).contiguous())
        return outs
