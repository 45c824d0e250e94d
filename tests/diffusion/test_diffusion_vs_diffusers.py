"""Cross-check one sampler step at a time against an independent implementation (diffusers).

diffusers computes in float32, so agreement is to float32 precision. Both sides get the same
model output and the same step noise.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from lamamba.diffusion import create_diffusion, space_timesteps


def constant(output):
    return lambda x, t, **kwargs: output


def test_respaced_learned_range_ddpm_matches_diffusers():
    diffusion = create_diffusion("250")
    kept = space_timesteps(1000, "250")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="learned_range",
                              clip_sample=False)
    scheduler.set_timesteps(timesteps=kept[::-1])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=gen)
    for k in (249, 248, 120, 3, 1, 0):
        eps = torch.randn(2, 4, 4, 4, generator=gen)
        v = torch.rand(2, 4, 4, 4, generator=gen) * 2 - 1
        output = torch.cat([eps, v], dim=1)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k))
        ours = diffusion.p_sample(constant(output), x, torch.full((2,), k), noise)
        theirs = scheduler.step(output, kept[k], x, generator=torch.Generator().manual_seed(k)).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        x = ours


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(eta):
    diffusion = create_diffusion("ddim50")
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == list(diffusion.timestep_map[::-1])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, 4, generator=gen)
    for k in (49, 30, 1, 0):
        eps = torch.randn(2, 4, 4, 4, generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        output = torch.cat([eps, torch.zeros_like(eps)], dim=1)
        ours = diffusion.ddim_sample(constant(output), x, torch.full((2,), k), noise, eta=eta)
        theirs = scheduler.step(eps, int(diffusion.timestep_map[k]), x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        x = ours
