"""Keyed training draws: the timestep and noise of each sample from its own generators.

Every random draw that touches a sample is keyed by (seed, global sample index, epoch)
(docs/protocols.md, *Data order and keyed randomness*), so a run resumed on a different number of
ranks sees the same timesteps and noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lamamba.rng import PerSampleGenerators


def training_draws(seed: int, sample_keys: Iterable[Sequence[int] | int], num_timesteps: int,
                   shape: Sequence[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform timesteps t (B,) int64 in [0, num_timesteps) and noise (B, *shape) float32.

    sample_keys: one key per sample, e.g. (index, epoch); t uses the rng purpose "timestep" and
    the noise the purpose "noise", each a fresh generator per call, so the draws are a pure
    function of (seed, key).
    """
    keys = list(sample_keys)
    t = PerSampleGenerators(seed, "timestep", keys).randint(num_timesteps, device=device)
    noise = PerSampleGenerators(seed, "noise", keys).randn(shape, device=device)
    return t.long(), noise
