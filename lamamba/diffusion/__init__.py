"""ADM / improved-DDPM Gaussian diffusion: schedules, hybrid loss, respaced DDPM / DDIM, guidance."""

from lamamba.diffusion.config import DiffusionConfig, create_diffusion
from lamamba.diffusion.draws import training_draws
from lamamba.diffusion.gaussian_diffusion import GaussianDiffusion, PosteriorPrediction
from lamamba.diffusion.guidance import guided_forward
from lamamba.diffusion.respace import respace, space_timesteps
from lamamba.diffusion.schedules import beta_schedule

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "PosteriorPrediction",
    "beta_schedule",
    "create_diffusion",
    "guided_forward",
    "respace",
    "space_timesteps",
    "training_draws",
]
