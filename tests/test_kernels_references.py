"""The torch references against direct, loop-by-loop statements of the model's maths,
and the dispatcher's contract. CPU only, float64, no Triton needed for most checks."""

import math
import os
import subprocess
import sys

import pytest
import torch

from hodor.kernels import (
    mask_logits,
    mask_logits_reference,
    masked_avg_pool,
    masked_avg_pool_reference,
    pixel_descriptor_attention,
    pixel_descriptor_attention_reference,
    soft_masked_attention,
    soft_masked_attention_reference,
)

C, H, D = 256, 8, 32
f64 = torch.float64


def test_soft_masked_attention_matches_per_head_statement():
    g = torch.Generator().manual_seed(1)
    b, nq, n = 2, 5, 40
    q, k, v = (torch.randn(b, s, C, generator=g, dtype=f64) for s in (nq, n, n))
    mask = torch.rand(b, nq, n, generator=g, dtype=f64)
    scale = torch.tensor([32, 32, 16, 16, 8, 8, 4, 4], dtype=f64)
    out = soft_masked_attention_reference(q, k, v, mask, scale, H)
    for bi in range(b):
        for h in range(H):
            ch = slice(h * D, (h + 1) * D)
            logits = q[bi, :, ch] @ k[bi, :, ch].T / math.sqrt(D) - (1 - mask[bi]) * scale[h]
            expect = torch.softmax(logits, -1) @ v[bi, :, ch]
            torch.testing.assert_close(out[bi, :, ch], expect)


def test_pixel_descriptor_attention_matches_per_head_statement():
    g = torch.Generator().manual_seed(2)
    b, n, nk = 2, 30, 12
    q = torch.randn(b, n, C, generator=g, dtype=f64)
    k, v = (torch.randn(b, nk, C, generator=g, dtype=f64) for _ in range(2))
    invalid = torch.rand(b, nk, generator=g) < 0.5
    invalid[:, 3] = False
    out = pixel_descriptor_attention_reference(q, k, v, invalid, H)
    for bi in range(b):
        keep = ~invalid[bi]
        for h in range(H):
            ch = slice(h * D, (h + 1) * D)
            weights = torch.softmax(q[bi, :, ch] @ k[bi, keep, ch].T / math.sqrt(D), -1)
            torch.testing.assert_close(out[bi, :, ch], weights @ v[bi, keep, ch])


def test_mask_logits_matches_per_descriptor_statement():
    g = torch.Generator().manual_seed(3)
    b, qd, t, hh, ww = 2, 4, 3, 5, 6
    f = torch.randn(b, C, hh, ww, generator=g, dtype=f64)
    d = torch.randn(b, qd, t, C, generator=g, dtype=f64)
    invalid = torch.rand(b, qd, t, generator=g) < 0.4
    invalid[0, 1] = True
    catch_all = torch.randn(b, 1, hh, ww, generator=g, dtype=f64)
    out = mask_logits_reference(f, d, invalid, catch_all)
    assert out.shape == (b, 1 + qd, hh, ww)
    torch.testing.assert_close(out[:, :1], catch_all)
    for bi in range(b):
        for qi in range(qd):
            best = torch.full((hh, ww), -math.inf, dtype=f64)
            for ti in range(t):
                if not invalid[bi, qi, ti]:
                    best = torch.maximum(best, torch.einsum("c,chw->hw", d[bi, qi, ti], f[bi]) / 16.0)
            torch.testing.assert_close(out[bi, 1 + qi], best)
    torch.testing.assert_close(mask_logits_reference(f, d, invalid), out[:, 1:])


def test_masked_avg_pool_matches_per_row_statement():
    g = torch.Generator().manual_seed(4)
    hh, ww, num_bg = 6, 7, 3
    f = torch.randn(1, C, hh, ww, generator=g, dtype=f64)
    masks = torch.rand(1, 7, hh, ww, generator=g)
    masks[0, 0] = 0.2  # background, empty
    masks[0, 3] = 0.0  # object, all zero
    masks[0, 4] = 0.1  # object, empty, maximum at one pixel
    masks[0, 4, 2, 5] = 0.4
    out = masked_avg_pool_reference(f, masks, num_bg)
    pixels = f[0].reshape(C, -1)
    for m in range(masks.shape[1]):
        row = masks[0, m].flatten()
        inside = (row > 0.5).nonzero().flatten()
        if inside.numel():
            expect = pixels[:, inside].mean(1)
        elif m >= num_bg:
            expect = pixels[:, int(row.argmax())]
        else:
            expect = torch.zeros(C, dtype=f64)
        torch.testing.assert_close(out[0, m], expect)
    torch.testing.assert_close(out[0, 3], pixels[:, 0])
    torch.testing.assert_close(out[0, 4], pixels[:, 2 * ww + 5])


def test_dispatcher_rejects_unknown_impl():
    q = torch.zeros(1, 2, C)
    with pytest.raises(ValueError, match="impl"):
        soft_masked_attention(q, q, q, torch.zeros(1, 2, 2), torch.ones(H), impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        pixel_descriptor_attention(q, q, q, torch.zeros(1, 2, dtype=torch.bool), impl="numpy")
    with pytest.raises(ValueError, match="impl"):
        mask_logits(
            torch.zeros(1, C, 2, 2), torch.zeros(1, 1, 1, C), torch.zeros(1, 1, 1, dtype=torch.bool), impl=""
        )
    with pytest.raises(ValueError, match="impl"):
        masked_avg_pool(torch.zeros(1, C, 2, 2), torch.zeros(1, 1, 2, 2), 0, impl="Torch")


def test_triton_on_cpu_without_interpreter_says_what_to_do(monkeypatch):
    pytest.importorskip("triton", reason="the Triton kernels need the triton package")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    f = torch.zeros(1, C, 4, 4)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        masked_avg_pool(f, torch.zeros(1, 2, 4, 4), 1, impl="triton")


def test_torch_impl_keeps_half_dtype():
    q = torch.randn(1, 3, C).to(torch.bfloat16)
    k = torch.randn(1, 10, C).to(torch.bfloat16)
    out = soft_masked_attention(q, k, k, torch.rand(1, 3, 10), torch.ones(H), impl="torch")
    assert out.dtype == torch.bfloat16
    assert masked_avg_pool(k.transpose(1, 2), torch.rand(1, 2, 10), 1).dtype == torch.bfloat16


def test_references_export_with_dynamic_shapes():
    """With ``kernels="torch"`` (how hodor-export runs the network) the model computes through these
    references, so the ONNX graphs hold what they trace to: their sizes must stay symbolic."""
    dim = torch.export.Dim

    class Pool(torch.nn.Module):
        def forward(self, f, m):
            return masked_avg_pool_reference(f, m, 9)

    class Logits(torch.nn.Module):
        def forward(self, f, d, inv, ca):
            return mask_logits_reference(f, d, inv, ca)

    f = torch.randn(1, C, 10, 12)
    h, w, q, t = dim("h"), dim("w"), dim("q"), dim("t")
    torch.export.export(
        Pool(), (f, torch.rand(1, 12, 10, 12)), dynamic_shapes=({2: h, 3: w}, {1: q, 2: h, 3: w})
    )
    d, inv, ca = torch.randn(1, 12, 3, C), torch.rand(1, 12, 3) < 0.3, torch.randn(1, 1, 10, 12)
    torch.export.export(
        Logits(), (f, d, inv, ca), dynamic_shapes=({2: h, 3: w}, {1: q, 2: t}, {1: q, 2: t}, {2: h, 3: w})
    )

    class PixelAttention(torch.nn.Module):
        def forward(self, q, k, v, inv):
            return pixel_descriptor_attention_reference(q, k, v, inv, H)

    class SoftAttention(torch.nn.Module):
        def forward(self, q, k, v, mask, scale):
            return soft_masked_attention_reference(q, k, v, mask, scale, H)

    n, keys = dim("n"), dim("keys")
    pixels, kv = torch.randn(1, 30, C), torch.randn(1, 12, C)
    torch.export.export(
        PixelAttention(),
        (pixels, kv, kv, torch.rand(1, 12) < 0.3),
        dynamic_shapes=({1: n}, {1: keys}, {1: keys}, {1: keys}),
    )
    torch.export.export(
        SoftAttention(),
        (kv, pixels, pixels, torch.rand(1, 12, 30), torch.ones(H)),
        dynamic_shapes=({1: q}, {1: n}, {1: n}, {1: q, 2: n}, None),
    )


def test_kernels_import_and_run_without_triton():
    """Triton is optional: the torch path works without it, the Triton path says how to get it."""
    code = """
import sys
sys.modules["triton"] = None  # import triton -> ImportError
import torch
from hodor.kernels import HAVE_TRITON, masked_avg_pool
assert not HAVE_TRITON
f, m = torch.randn(1, 256, 4, 4), torch.rand(1, 3, 4, 4)
assert masked_avg_pool(f, m, 1).shape == (1, 3, 256)
try:
    masked_avg_pool(f, m, 1, impl="triton")
except RuntimeError as e:
    assert "pip install hodor-engine[triton]" in str(e), e
    print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
