"""The autoencoders that map images to the latents the diffusion model learns.

Three kinds share one interface (:class:`Autoencoder`):

- ``"sd-vae"``: diffusers' ``AutoencoderKL`` (sd-vae-ft-mse) from a local directory or a hub id;
  bfloat16 on a GPU by default (float16 tops out at 65504 and VAE activations can exceed it, which
  turns into NaN; bfloat16 has float32's range), float32 on request and always on the CPU. Latents: 4 channels at 1/8 resolution,
  scale factor 0.18215 (docs/protocols.md, *Images to latents*).
- ``"tiny-vae"``: an ``AutoencoderKL`` of the same latent shape (4 channels, /8) with a few
  thousand random weights drawn from a fixed seed, so every process builds the same network. For
  tests and benchmarks; its scale factor is the SD VAE's so downstream code takes the same path.
- ``"identity"``: pixel-space "latents" (the image itself; log-variance -inf, i.e. std exactly 0,
  so stored latents reproduce the pixels), scale factor 1. The
  quickstart uses it on 1-channel digits.

``encode_moments`` returns the *unscaled* posterior moments; ``decode`` takes unscaled latents,
so a sampler divides the model's output by ``scale_factor`` before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

SD_VAE_SCALE_FACTOR = 0.18215
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class AutoencoderConfig:
    """Which autoencoder turns images into latents.

    kind: "sd-vae" | "tiny-vae" | "identity".
    path_or_id: for "sd-vae", a local diffusers directory or a hub id (loaded offline if cached).
    dtype: "auto" (bfloat16 on GPU, float32 on CPU) or an explicit float32/float16/bfloat16; the
        CPU always computes in float32.
    image_channels: channels of the input images (3 for RGB, 1 for grayscale digits).
    """

    kind: Literal["sd-vae", "tiny-vae", "identity"] = "sd-vae"
    path_or_id: str = "stabilityai/sd-vae-ft-mse"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    image_channels: int = 3

    def __post_init__(self) -> None:
        if self.image_channels < 1:
            raise ValueError(f"image_channels: must be >= 1, got {self.image_channels}")
        if self.kind == "sd-vae" and self.image_channels != 3:
            raise ValueError(f"image_channels: the SD VAE takes RGB images (3), got {self.image_channels}")

    @property
    def name(self) -> str:
        """The name recorded in manifests, e.g. ``sd-vae:stabilityai/sd-vae-ft-mse``."""
        return f"sd-vae:{self.path_or_id}" if self.kind == "sd-vae" else self.kind


class NonFiniteError(ValueError):
    """A latent or an image holds NaN or inf: it is never written; the message names the items."""


def check_finite(values, what: str, names: Sequence) -> None:
    """Raise :class:`NonFiniteError` if any item of ``values`` (a tensor or array whose first axis
    runs along ``names``) holds a NaN or an infinity, naming the first few such items."""
    finite = torch.isfinite(torch.as_tensor(values)).reshape(len(names), -1).all(1)
    if bool(finite.all()):
        return
    bad = [str(names[i]) for i in torch.nonzero(~finite).flatten().tolist()]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise NonFiniteError(f"{what}: non-finite values (NaN or inf) in {', '.join(bad[:5])}{more}")


class Autoencoder:
    """An image <-> latent map with a Gaussian posterior.

    Attributes: ``name``, ``scale_factor``, ``latent_channels``, ``downsample`` (latent side =
    image side / downsample), ``image_channels``, ``device``, ``dtype``.
    """

    def __init__(self, name: str, vae: torch.nn.Module | None, scale_factor: float, latent_channels: int,
                 downsample: int, image_channels: int, device: torch.device, dtype: torch.dtype):
        self.name = name
        self.vae = vae
        self.scale_factor = scale_factor
        self.latent_channels = latent_channels
        self.downsample = downsample
        self.image_channels = image_channels
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) in [-1, 1] -> (mean, logvar), each (B, latent_channels, H/d, W/d) float32."""
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise ValueError(f"{self.name}: expected images (B, {self.image_channels}, H, W), got {tuple(images.shape)}")
        if self.vae is None:
            mean = images.to(self.device, torch.float32)
            return mean, torch.full_like(mean, float("-inf"))
        posterior = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return posterior.mean.float(), posterior.logvar.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, latent_channels, h, w) -> images (B, C, h*d, w*d) float32 in [-1, 1]."""
        if self.vae is None:
            return latents.to(self.device, torch.float32).clamp(-1, 1)
        images = self.vae.decode(latents.to(self.device, self.dtype)).sample
        return images.float().clamp(-1, 1)


def _compute_dtype(cfg: AutoencoderConfig, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32  # half-precision convolutions on CPU are slow and not what was validated
    return torch.bfloat16 if cfg.dtype == "auto" else _DTYPES[cfg.dtype]


def tiny_vae(image_channels: int = 3) -> torch.nn.Module:
    """A random-weight AutoencoderKL with the SD VAE's latent shape; the same weights in every process."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoencoderKL(
            in_channels=image_channels,
            out_channels=image_channels,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=SD_VAE_SCALE_FACTOR,
        )


def build_autoencoder(cfg: AutoencoderConfig, device: torch.device | str = "cpu") -> Autoencoder:
    """Build the autoencoder ``cfg`` names on ``device``, in eval mode."""
    device = torch.device(device)
    dtype = _compute_dtype(cfg, device)
    if cfg.kind == "identity":
        return Autoencoder(cfg.name, None, 1.0, cfg.image_channels, 1, cfg.image_channels, device, torch.float32)
    if cfg.kind == "tiny-vae":
        vae = tiny_vae(cfg.image_channels)
    else:
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(cfg.path_or_id, torch_dtype=dtype)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"autoencoder.path_or_id={cfg.path_or_id!r}: cannot load an AutoencoderKL from it "
                f"(a local diffusers directory, or a hub id already in the cache): {err}"
            ) from err
    if vae.dtype != dtype:
        vae = vae.to(dtype)
    vae = vae.to(device).eval().requires_grad_(False)
    scale = SD_VAE_SCALE_FACTOR if cfg.kind == "tiny-vae" else float(vae.config.scaling_factor)
    downsample = 2 ** (len(vae.config.block_out_channels) - 1)
    return Autoencoder(cfg.name, vae, scale, vae.config.latent_channels, downsample, cfg.image_channels,
                       device, dtype)
