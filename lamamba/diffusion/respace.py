"""Respacing: sample with a subset of the training timesteps (ADM's ``space_timesteps``).

Keeping steps S = {s_1 < ... < s_K} of a diffusion with cumulative products alpha_bar gives a
K-step diffusion with beta_k = 1 - alpha_bar_{s_k} / alpha_bar_{s_{k-1}} (alpha_bar before the
first kept step = 1), so its alpha_bar equals the original's at every kept step; the model is
still called with the original timestep s_k.

Syntax of ``section_counts``:
  "250"        250 steps spread evenly over [0, T)
  "10,15,20"   T split into 3 equal sections, with 10, 15 and 20 evenly spread steps in each
  "ddim50"     the DDIM paper's striding: range(0, T, stride) with exactly 50 steps
  ""           every step (no respacing)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lamamba.diffusion.gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """The sorted timesteps in [0, num_timesteps) kept by ``section_counts`` (syntax above)."""
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec == "":
            return list(range(num_timesteps))
        if spec.startswith("ddim"):
            return _ddim_timesteps(num_timesteps, spec)
        try:
            counts = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(f"timestep_respacing {section_counts!r}: expected '' or 'N', "
                             f"'N1,N2,...' or 'ddimN'") from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"timestep_respacing {section_counts!r}: step counts must be >= 1")
    if len(counts) > num_timesteps:
        raise ValueError(f"timestep_respacing {section_counts!r}: more sections than {num_timesteps} steps")

    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"timestep_respacing {section_counts!r}: cannot take {count} steps "
                             f"from a section of {size}")
        # Evenly spread over [0, size - 1], both ends included, rounded to the nearest step; the
        # position is accumulated (not multiplied) so the rounding matches ADM's step for step.
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _ddim_timesteps(num_timesteps: int, spec: str) -> list[int]:
    try:
        count = int(spec[len("ddim"):])
    except ValueError:
        raise ValueError(f"timestep_respacing {spec!r}: expected 'ddimN' with an integer N") from None
    for stride in range(1, num_timesteps):
        steps = list(range(0, num_timesteps, stride))
        if len(steps) == count:
            return steps
    raise ValueError(f"timestep_respacing {spec!r}: no integer stride gives exactly {count} of "
                     f"{num_timesteps} steps")


def respace(diffusion: GaussianDiffusion, section_counts: str | Sequence[int]) -> GaussianDiffusion:
    """A diffusion over the steps of ``diffusion`` kept by ``section_counts``.

    Works on an already respaced diffusion too: the timestep maps compose, so the model always
    sees the original training timesteps.
    """
    kept = space_timesteps(diffusion.num_timesteps, section_counts)
    alpha_bar = diffusion.alphas_cumprod[kept]
    betas = 1.0 - alpha_bar / np.append(1.0, alpha_bar[:-1])
    return GaussianDiffusion(betas, diffusion.variance_type, diffusion.timestep_map[kept], diffusion.decoder_cdf)
