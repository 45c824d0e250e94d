"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"): the transformer baseline that
LaMamba-Diff is compared with, built from the same ModelConfig and trained, sampled and evaluated by
the same jobs.

    z_t (B, C_in, R, R) -> p x p patch embed (conv) + fixed 2-D sin-cos positional embedding
    depth x DiT block (adaLN-Zero): global multi-head self-attention and an MLP, each modulated by c
    final adaLN layer -> per-patch (p*p*2*C_in) -> unpatchify -> (B, 2 C_in, R, R): eps, then v

Tokens are kept as a channels-last (B, R/p, R/p, D) grid like LaMamba-Diff's, so the shared pieces
(modulate, the embedders, unpatchify, the initialisation) apply unchanged. The sizes (S, B, L, XL with
patches 2, 4, 8) are ``DIT_PRESETS`` in :mod:`lamamba.models.config`, as DiT's ``DiT_models``.
The positional embedding is a non-persistent buffer (DiT keeps it frozen): it follows from the
resolution, so a checkpoint loads at any resolution without resizing anything.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lamamba.models.block import Mlp, modulate
from lamamba.models.config import ModelConfig
from lamamba.models.embeddings import (LabelEmbedder, TimestepEmbedder, check_latent_input, sincos_pos_embed_2d,
                                       unpatchify)
from lamamba.models.init import adaln_zero_init


class Attention(nn.Module):
    """Global multi-head self-attention over a (B, H, W, D) token grid (timm's, qkv with bias)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        qkv = self.qkv(x).view(b, h * w, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, T, D / heads)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, d))

    def extra_flops(self, x: torch.Tensor) -> int:
        """Multiply-adds of q @ k^T and attn @ v over all T tokens (the Linears count on their own)."""
        b, h, w, d = x.shape
        return 2 * b * (h * w) ** 2 * d


class DiTBlock(nn.Module):
    """x + gate * branch(LN(x) * (1 + scale) + shift) for attention and the MLP; the six
    modulations come from SiLU(c) through one zero-initialised Linear (adaLN-Zero)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.checkpoint = False

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa[:, None, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiTFinalLayer(nn.Module):
    """LN (no affine) modulated by c, then Linear(D -> p*p*C_out): (B, h, w, D) -> (B, h, w, p*p*C_out)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The DiT network of a ``DiT-*`` :class:`ModelConfig`; see the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.backbone != "dit":
            raise ValueError(f"DiT needs a DiT preset, got {cfg.preset!r}")
        self.cfg = cfg
        d, p = cfg.base_width, cfg.patch_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)
        grid = cfg.input_size // p
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, grid, grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout_prob)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads[0], cfg.mlp_ratio) for _ in range(cfg.isotropic_depth))
        self.final_layer = DiTFinalLayer(d, p * p * cfg.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier Linears, normal(0.02) embedders, zero adaLN modulations and (by default,
        ``zero_init_final``) a zero final Linear."""
        modulations = [m.adaLN_modulation[-1] for m in (*self.blocks, self.final_layer)]
        adaln_zero_init(self, self.x_embedder, self.t_embedder, self.y_embedder, modulations,
                        self.final_layer.linear if self.cfg.zero_init_final else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C_in, R, R), t: (B,) timesteps, y: (B,) labels (num_classes = null), drop_mask:
        (B,) bool forcing the null label -> (B, C_out, R, R)."""
        cfg = self.cfg
        check_latent_input(x, cfg.in_channels, cfg.input_size)
        c = self.t_embedder(t) + self.y_embedder(y, drop_mask)
        h = self.x_embedder(x).permute(0, 2, 3, 1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            if block.checkpoint and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return unpatchify(self.final_layer(h, c), cfg.patch_size, cfg.out_channels)

    @property
    def stage_names(self) -> list[str]:
        return ["blocks"]

    def set_activation_checkpointing(self, policy: str) -> None:
        """"none", or "all" / "blocks": recompute every block's activations in the backward pass."""
        if policy not in ("none", "all", "blocks"):
            raise ValueError(f"activation checkpointing policy {policy!r}: DiT takes 'none', 'all' or 'blocks'")
        for block in self.blocks:
            block.checkpoint = policy != "none"

    def no_weight_decay(self) -> set[str]:
        """DiT decays every parameter (its recipe uses no weight decay at all)."""
        return set()

    def load_state_dict_resized(self, state_dict: dict[str, torch.Tensor], strict: bool = True):
        """Load weights trained at another resolution: nothing to interpolate (the positional
        embedding is a buffer rebuilt for this resolution)."""
        return self.load_state_dict(state_dict, strict=strict)
