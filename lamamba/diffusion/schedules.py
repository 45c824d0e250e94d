"""Noise schedules: the betas of the forward process, in float64.

"linear" is DDPM's (beta from 1e-4 to 0.02), scaled by 1000 / T so that any number of steps
spans the same amount of noise; "cosine" is improved DDPM's alpha_bar(t) = cos^2((t/T + s) /
(1 + s) * pi / 2) with s = 0.008, betas capped at 0.999 so the last step stays invertible.
"""

from __future__ import annotations

import math

import numpy as np

NOISE_SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """The betas of a named schedule, shape (num_timesteps,), float64."""
    if num_timesteps < 2:
        raise ValueError(f"a diffusion needs at least 2 steps, got num_timesteps={num_timesteps}")
    if name == "linear":
        scale = 1000.0 / num_timesteps
        if scale * 0.02 >= 1.0:
            raise ValueError(f"the linear schedule needs more than 20 steps (its last beta is "
                             f"20 / T), got num_timesteps={num_timesteps}")
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        return betas_from_alpha_bar(
            lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2, num_timesteps)
    raise ValueError(f"unknown noise_schedule {name!r}; known: {list(NOISE_SCHEDULES)}")


def betas_from_alpha_bar(alpha_bar, num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas whose cumulative product follows ``alpha_bar(u)`` for u = t / T in [0, 1].

    beta_t = 1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), clipped to ``max_beta``.
    """
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = np.array([alpha_bar(x) for x in u], dtype=np.float64)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)
