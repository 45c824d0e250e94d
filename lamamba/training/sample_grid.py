"""EMA sample grids for TensorBoard: a few DDIM steps from the EMA weights, decoded when an
autoencoder is configured.

Sample i has label i mod num_classes and noise keyed by (seed, i) (rng purpose "sample"), so the
grids of successive steps show the same noise and classes and differ only by the weights.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lamamba.diffusion import DiffusionConfig, create_diffusion, guided_forward
from lamamba.models import ModelConfig, build_model
from lamamba.rng import PerSampleGenerators


def image_grid(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] with C in {1, 3} -> (3, rows*H, cols*W), as square as possible."""
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(n, 3, h, w)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = images.new_zeros(3, rows * h, cols * w)
    for i, image in enumerate(images):
        r, k = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = image
    return grid


def latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    """Without a decoder: the first 3 (or 1) latent channels, each image stretched to [0, 1]."""
    x = latents[:, :3] if latents.shape[1] >= 3 else latents[:, :1]
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-8)


class EMASampleGrid:
    """Draws the grid from an EMA state dict on one process (the main rank)."""

    def __init__(self, model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig, device: torch.device,
                 count: int, steps: int, cfg_scale: float, seed: int, scale_factor: float,
                 autoencoder_cfg=None):
        self.model_cfg = model_cfg
        self.model = build_model(model_cfg).to(device).eval().requires_grad_(False)
        self.diffusion = create_diffusion(**{**dataclasses.asdict(diffusion_cfg), "timestep_respacing": f"ddim{steps}"})
        self.device = device
        self.count = count
        self.cfg_scale = cfg_scale if model_cfg.num_classes > 0 else 1.0
        self.seed = seed
        self.scale_factor = scale_factor
        self.autoencoder = None
        if autoencoder_cfg is not None:
            from lamamba.autoencoders import build_autoencoder

            self.autoencoder = build_autoencoder(autoencoder_cfg, device)

    def _model_fn(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return guided_forward(self.model, x, t, y, scale=self.cfg_scale, null_label=self.model_cfg.num_classes,
                              eps_channels=self.model_cfg.in_channels)

    @torch.no_grad()
    def __call__(self, ema_state: dict[str, torch.Tensor]) -> torch.Tensor:
        """ema_state: the EMA's parameters -> grid (3, H, W) float in [0, 1]."""
        missing, unexpected = self.model.load_state_dict(ema_state, strict=False)
        buffers = {name for name, _ in self.model.named_buffers()}
        if unexpected or set(missing) - buffers:
            raise KeyError(f"EMA state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        cfg = self.model_cfg
        labels = torch.arange(self.count, device=self.device) % max(cfg.num_classes, 1)
        generators = PerSampleGenerators(self.seed, "sample", [(i,) for i in range(self.count)])
        latents = self.diffusion.ddim_sample_loop(
            self._model_fn, (self.count, cfg.in_channels, cfg.input_size, cfg.input_size),
            model_kwargs={"y": labels}, generators=generators, device=self.device)
        if self.autoencoder is None:
            images = latents_to_images(latents)
        else:
            images = (self.autoencoder.decode(latents / self.scale_factor) + 1) / 2
        return image_grid(images.float().clamp(0, 1).cpu())
