"""LaMamba-Diff: a linear-time latent-diffusion U-Net of SS2D scans and window attention."""

__version__ = "0.1.0"
