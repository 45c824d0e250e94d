"""The diffusion's settings and the factory that builds it (paper defaults: DiT / ADM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lamamba.diffusion.gaussian_diffusion import GaussianDiffusion
from lamamba.diffusion.respace import respace, space_timesteps
from lamamba.diffusion.schedules import beta_schedule


@dataclass
class DiffusionConfig:
    """steps: T training steps; noise_schedule: "linear" | "cosine"; learn_sigma: the model
    outputs v (2 C channels) for a learned-range variance, else the variance is fixed
    (beta_t, or beta~_t with sigma_small); timestep_respacing: ADM syntax ("", "250", "ddim50",
    "10,10,10"), "" for training; decoder_cdf: the normal CDF in the t = 0 decoder NLL of the vb
    term, "adm_tanh" (ADM's tanh approximation, as ADM / DiT / LaMamba-Diff train) or "exact"."""

    steps: int = 1000
    noise_schedule: Literal["linear", "cosine"] = "linear"
    learn_sigma: bool = True
    sigma_small: bool = False
    timestep_respacing: str = ""
    decoder_cdf: Literal["adm_tanh", "exact"] = "adm_tanh"

    def __post_init__(self) -> None:
        check_schedule(self.noise_schedule, self.steps, self.timestep_respacing)


def check_schedule(noise_schedule: str, steps: int, respacing: str, steps_key: str = "steps",
                   respacing_key: str = "timestep_respacing") -> None:
    """Raise ValueError naming the key if ``steps`` cannot carry ``noise_schedule`` or ``respacing``
    does not parse against it (what ``create_diffusion`` would fail on later)."""
    try:
        beta_schedule(noise_schedule, steps)
    except ValueError as err:
        raise ValueError(f"{steps_key}: {err}") from None
    try:
        space_timesteps(steps, respacing)
    except ValueError as err:
        raise ValueError(f"{respacing_key}: {err}") from None


def create_diffusion(timestep_respacing: str = "", noise_schedule: str = "linear", learn_sigma: bool = True,
                     diffusion_steps: int | None = None, sigma_small: bool = False, *,
                     steps: int | None = None, decoder_cdf: str = "adm_tanh") -> GaussianDiffusion:
    """Build the diffusion: a T-step schedule (T = 1000 by default), respaced when
    ``timestep_respacing`` is set.

    ``steps`` is DiffusionConfig's name for ``diffusion_steps``, so both
    ``create_diffusion(**dataclasses.asdict(cfg))`` and ``create_diffusion(diffusion_steps=T)`` work.
    """
    if steps is not None and diffusion_steps is not None and steps != diffusion_steps:
        raise ValueError(f"steps={steps} and diffusion_steps={diffusion_steps} disagree; give one")
    num_steps = next((n for n in (steps, diffusion_steps) if n is not None), 1000)
    if learn_sigma:
        variance_type = "learned_range"
    else:
        variance_type = "fixed_small" if sigma_small else "fixed_large"
    base = GaussianDiffusion(beta_schedule(noise_schedule, num_steps), variance_type, decoder_cdf=decoder_cdf)
    return respace(base, timestep_respacing) if timestep_respacing else base
