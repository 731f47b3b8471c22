"""The model's descriptor computations (the plain-torch references in ``hodor.kernels``, which the
model runs with ``kernels="torch"``) and the position encoding, against direct transcriptions."""

from __future__ import annotations

import math

import torch

from hodor.kernels import mask_logits_reference as mask_logits
from hodor.kernels import pixel_descriptor_attention_reference as pixel_descriptor_attention
from hodor.kernels import soft_masked_attention_reference as soft_masked_attention
from hodor.model.position_encoding import sine_position_encoding


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_soft_masked_attention_per_head() -> None:
    g = _gen(0)
    b, q, s, heads, d = 2, 5, 17, 8, 4
    query, key, value = (torch.randn(b, n, heads * d, generator=g) for n in (q, s, s))
    mask = torch.rand(b, q, s, generator=g)
    scales = torch.tensor([32.0, 32, 16, 16, 8, 8, 4, 4])
    got = soft_masked_attention(query, key, value, mask, scales)
    assert got.shape == (b, q, heads * d)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = query[..., sl] @ key[..., sl].transpose(1, 2) / math.sqrt(d) - (1 - mask) * scales[h]
        want = logits.softmax(-1) @ value[..., sl]
        torch.testing.assert_close(got[..., sl], want, rtol=1e-5, atol=1e-6)


def test_pixel_descriptor_attention_drops_invalid_keys() -> None:
    g = _gen(1)
    b, p, s, heads, d = 1, 30, 12, 8, 4
    query, key, value = (torch.randn(b, n, heads * d, generator=g) for n in (p, s, s))
    invalid = torch.zeros(b, s, dtype=torch.bool)
    invalid[0, [2, 5, 11]] = True
    got = pixel_descriptor_attention(query, key, value, invalid, heads)
    keep = ~invalid[0]
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = query[0, :, sl] @ key[0, keep, sl].T / math.sqrt(d)
        want = logits.softmax(-1) @ value[0, keep, sl]
        torch.testing.assert_close(got[0, :, sl], want, rtol=1e-5, atol=1e-6)


def test_pixel_descriptor_attention_over_an_empty_history_adds_nothing() -> None:
    """Every key invalid: zeros, not the NaN of a softmax over nothing (see
    hodor.kernels.pixel_descriptor_attention); other batch items are unaffected."""
    g = _gen(3)
    b, p, s, heads, d = 2, 10, 6, 8, 4
    query, key, value = (torch.randn(b, n, heads * d, generator=g) for n in (p, s, s))
    invalid = torch.zeros(b, s, dtype=torch.bool)
    invalid[0] = True
    got = pixel_descriptor_attention(query, key, value, invalid, heads)
    assert torch.equal(got[0], torch.zeros(p, heads * d))
    alone = pixel_descriptor_attention(query[1:], key[1:], value[1:], invalid[1:], heads)
    torch.testing.assert_close(got[1:], alone, rtol=0, atol=0)


def test_mask_logits_best_valid_entry() -> None:
    g = _gen(2)
    b, q, t, c, h, w = 1, 4, 3, 16, 5, 6
    desc = torch.randn(b, q, t, c, generator=g)
    fmap = torch.randn(b, c, h, w, generator=g)
    invalid = torch.zeros(b, q, t, dtype=torch.bool)
    invalid[0, 1, 0] = True
    invalid[0, 3, :] = True
    got = mask_logits(fmap, desc, invalid)
    assert got.shape == (b, q, h, w)
    for qi in range(q):
        scores = [
            torch.einsum("c,chw->hw", desc[0, qi, ti], fmap[0]) / math.sqrt(c)
            for ti in range(t)
            if not invalid[0, qi, ti]
        ]
        if scores:
            torch.testing.assert_close(got[0, qi], torch.stack(scores).amax(0), rtol=1e-5, atol=1e-5)
        else:
            assert torch.isneginf(got[0, qi]).all()


def test_sine_position_encoding() -> None:
    h, w = 3, 4
    pos = sine_position_encoding(torch.zeros(2, 256, h, w))
    assert pos.shape == (2, 256, h, w)
    for c in (0, 1, 6, 77, 127):
        dim_t = 10000 ** (2 * (c // 2) / 128)
        fn = math.sin if c % 2 == 0 else math.cos
        for y in range(h):
            for x in range(w):
                py = (y + 1) / (h + 1e-6) * 2 * math.pi
                px = (x + 1) / (w + 1e-6) * 2 * math.pi
                assert math.isclose(pos[1, c, y, x].item(), fn(py / dim_t), abs_tol=1e-5)
                assert math.isclose(pos[1, 128 + c, y, x].item(), fn(px / dim_t), abs_tol=1e-5)
