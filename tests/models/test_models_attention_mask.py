"""Shifted-window attention: the per-window mask is broadcast over the batch, never copied per image
(it was ``bias.repeat(b, ...)``: B x nW x heads x N^2 floats per block), and the result is the
attention with the full mask spelled out."""

import torch
from op_recorder import OpRecorder

from lamamba.models.attention import WindowAttention, window_partition, window_reverse


def reference(m: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Swin's formulation: softmax(q k^T / sqrt(d) + bias + mask) v with the mask of every window of
    every image materialised."""
    b, h, w, c = x.shape
    wh, ww = m.window
    n, heads = wh * ww, m.num_heads
    x = torch.roll(x, shifts=(-m.shift, -m.shift), dims=(1, 2))
    q, k, v = m.qkv(window_partition(x, wh, ww)).view(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    bias = m.relative_position_bias_table[m.relative_position_index.flatten()].view(n, n, heads).permute(2, 0, 1)
    mask = m.attn_mask.repeat(b, 1, 1)[:, None]  # (B*nW, 1, N, N)
    attn = (q @ k.transpose(-1, -2)) / (c // heads) ** 0.5 + bias + mask
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
    return torch.roll(window_reverse(m.proj(out), wh, ww, h, w), shifts=(m.shift, m.shift), dims=(1, 2))


def test_shifted_window_mask_is_broadcast_and_exact():
    torch.manual_seed(0)
    m = WindowAttention(32, 4, (16, 16), window=8, shift=True)
    x = torch.randn(3, 16, 16, 32, dtype=torch.float64)
    m = m.double()
    with OpRecorder() as rec:
        out = m(x)
    assert "aten.repeat.default" not in rec.ops
    torch.testing.assert_close(out, reference(m, x), rtol=1e-12, atol=1e-12)
    # gradients flow through the new layout exactly as through the reference
    x.requires_grad_(True)
    g1 = torch.autograd.grad(m(x).square().sum(), x)[0]
    g2 = torch.autograd.grad(reference(m, x).square().sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_unshifted_and_global_windows_unchanged():
    torch.manual_seed(0)
    for m in (WindowAttention(32, 4, (16, 16), window=8, shift=False), WindowAttention(32, 4, (8, 8), window=None)):
        x = torch.randn(2, *m.resolution, 32)
        assert m(x).shape == x.shape and m.attn_mask is None
