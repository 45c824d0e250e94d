"""LaMamba-Diff: a U-Net of LaMamba blocks over latents, conditioned on timestep and class.

    z_t (B, C_in, R, R) -> 1x1 patch embed + LayerNorm + positional embedding   (channels-last)
    encoder stages (widths d, 2d, 4d, 4d; Swin patch merging after the first two)
    bottleneck with an outer residual  x = x + mid(x)
    decoder stages (patch expanding where the encoder merged), each adding its encoder skip
    final AdaLN layer -> (B, 2 C_in, R, R): eps, then the variance interpolation v

The isotropic ablation replaces the U-Net with one stack of blocks over p x p patches.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from lamamba.models.attention import resize_relative_position_bias
from lamamba.models.block import LaMambaBlock, modulate
from lamamba.models.config import ModelConfig
from lamamba.models.embeddings import (LabelEmbedder, TimestepEmbedder, check_latent_input, resize_pos_embed,
                                       sincos_pos_embed_2d, unpatchify)
from lamamba.models.init import adaln_zero_init


class PatchMerging(nn.Module):
    """Swin's 2x downsampling: (B, H, W, C) -> (B, H/2, W/2, out_dim) via the 2x2 neighbours
    [(0,0), (1,0), (0,1), (1,1)] concatenated, LayerNorm(4C), Linear(4C -> out_dim)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpanding(nn.Module):
    """2x upsampling: (B, H, W, C) -> Linear(C -> 2C) -> pixel shuffle -> (B, 2H, 2W, C/2) -> LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, c // 2).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, 2 * h, 2 * w, c // 2))


class FinalLayer(nn.Module):
    """AdaLN output head: (B, H, W, d) -> (B, H, W, out_dim)."""

    def __init__(self, dim: int, cond_dim: int, out_dim: int):
        super().__init__()
        self.cond_proj = nn.Linear(cond_dim, dim)
        self.pre = nn.Linear(dim, dim, bias=False)
        self.pre_norm = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(self.cond_proj(c)).chunk(2, dim=-1)
        x = self.pre_norm(self.pre(x))
        return self.linear(modulate(self.norm(x), shift, scale))


class Stage(nn.Module):
    """A sequence of LaMamba blocks at one width and resolution (possibly empty)."""

    def __init__(self, blocks: list[LaMambaBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if block.checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
        return x


class LaMambaDiff(nn.Module):
    """The network of :class:`ModelConfig`; see the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.base_width
        patch = cfg.patch_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, d, kernel_size=patch, stride=patch)
        self.embed_norm = nn.LayerNorm(d)
        grid = cfg.input_size // patch
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(d, grid, grid)[None])
        self.t_embedder = TimestepEmbedder(cfg.cond_dim)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.cond_dim, cfg.class_dropout_prob)

        widths, resolutions = cfg.stage_widths, cfg.stage_resolutions
        if cfg.architecture == "isotropic":
            self.stages = nn.ModuleDict({"mid": self._stage(cfg.isotropic_depth, widths[0], resolutions[0],
                                                            cfg.num_heads[0], decoder=False)})
        else:
            n = len(cfg.enc_depths)
            stages = {f"enc{i}": self._stage(cfg.enc_depths[i], widths[i], resolutions[i], cfg.num_heads[i],
                                             decoder=False) for i in range(n)}
            stages["mid"] = self._stage(cfg.mid_depth, widths[-1], resolutions[-1], cfg.num_heads[n - 1],
                                        decoder=False)
            for j in range(n):
                i = n - 1 - j  # the encoder twin
                stages[f"dec{j}"] = self._stage(cfg.dec_depths[j], widths[i], resolutions[i], cfg.num_heads[i],
                                                decoder=True)
            self.stages = nn.ModuleDict(stages)
            merges = [i < cfg.num_downsamples for i in range(n)]
            self.downsamples = nn.ModuleList(
                PatchMerging(widths[i], widths[i + 1]) if merges[i] else nn.Identity() for i in range(n))
            self.upsamples = nn.ModuleList(
                PatchExpanding(widths[n - j]) if merges[n - 1 - j] else nn.Identity() for j in range(n))
            if cfg.skip == "concat":
                self.skip_projs = nn.ModuleList(nn.Linear(2 * widths[n - 1 - j], widths[n - 1 - j])
                                                for j in range(n))
        self.final_layer = FinalLayer(d, cfg.cond_dim, patch * patch * cfg.out_channels)
        self.initialize_weights()

    def _stage(self, depth: int, dim: int, resolution: int, num_heads: int, decoder: bool) -> Stage:
        cfg = self.cfg
        return Stage([
            LaMambaBlock(dim, cfg.cond_dim, resolution=(resolution, resolution), num_heads=num_heads,
                         attention=cfg.attention, window_size=cfg.window_size, shift=i % 2 == 1,
                         d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, mlp_ratio=cfg.mlp_ratio, scan=cfg.scan,
                         scan_backend=cfg.scan_backend, project_cond=decoder)
            for i in range(depth)])

    def initialize_weights(self) -> None:
        """The release's init: xavier Linears, normal(0.02) embedders, zero AdaLN modulations."""
        modulations = [m.adaLN_modulation[-1] for m in self.modules() if isinstance(m, (LaMambaBlock, FinalLayer))]
        adaln_zero_init(self, self.x_embedder, self.t_embedder, self.y_embedder, modulations,
                        self.final_layer.linear if self.cfg.zero_init_final else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C_in, R, R), t: (B,) timesteps, y: (B,) labels (num_classes = null), drop_mask:
        (B,) bool forcing the null label -> (B, C_out, R, R)."""
        cfg = self.cfg
        check_latent_input(x, cfg.in_channels, cfg.input_size)
        c = self.t_embedder(t) + self.y_embedder(y, drop_mask)
        h = self.embed_norm(self.x_embedder(x).permute(0, 2, 3, 1)) + self.pos_embed
        h = self.stages["mid"](h, c) if cfg.architecture == "isotropic" else self._unet(h, c)
        h = self.final_layer(h, c)  # (B, R/p, R/p, p*p*C_out)
        return unpatchify(h, cfg.patch_size, cfg.out_channels)

    def _unet(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        n = len(self.cfg.enc_depths)
        skips = []
        for i in range(n):
            x = self.stages[f"enc{i}"](x, c)
            skips.append(x)
            x = self.downsamples[i](x)
        if len(self.stages["mid"].blocks):
            x = x + self.stages["mid"](x, c)
        for j in range(n):
            x = self.upsamples[j](x)
            skip = skips[n - 1 - j]
            x = self.skip_projs[j](torch.cat([x, skip], dim=-1)) if self.cfg.skip == "concat" else x + skip
            x = self.stages[f"dec{j}"](x, c)
        return x

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def set_activation_checkpointing(self, policy: str) -> None:
        """"none", "all", or a comma list of stage names (enc0..enc3, mid, dec0..dec3): recompute
        the activations of every block of those stages in the backward pass."""
        names = set(self.stage_names)
        if policy == "none":
            chosen = set()
        elif policy == "all":
            chosen = names
        else:
            chosen = {p.strip() for p in policy.split(",") if p.strip()}
            unknown = sorted(chosen - names)
            if unknown or not chosen:
                raise ValueError(f"activation checkpointing policy {policy!r}: unknown stage(s) {unknown}; "
                                 f"use 'none', 'all' or a comma list of {self.stage_names}")
        for name, stage in self.stages.items():
            for block in stage.blocks:
                block.checkpoint = name in chosen

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that take no weight decay: every SS2D's A_logs and Ds."""
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in ("A_logs", "Ds")}

    def load_state_dict_resized(self, state_dict: dict[str, torch.Tensor], strict: bool = True):
        """Load weights trained at another resolution: the positional embedding, and the relative
        position bias tables of stages whose window changed size, are interpolated (bicubic) to
        this model's sizes; masks and scan indices are rebuilt, not loaded."""
        state_dict = dict(state_dict)
        own = self.state_dict()
        for name, value in state_dict.items():
            if name not in own or own[name].shape == value.shape:
                continue
            if name == "pos_embed":
                state_dict[name] = resize_pos_embed(value, own[name].shape[1:3])
            elif name.endswith("relative_position_bias_table"):
                state_dict[name] = resize_relative_position_bias(value, own[name].shape[0])
        return self.load_state_dict(state_dict, strict=strict)
