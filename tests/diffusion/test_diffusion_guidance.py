"""Classifier-free guidance: one batched call, scale 1 skips the null half, 3- vs 4-channel modes."""

import functools

import pytest
import torch

from lamamba.diffusion import create_diffusion, guided_forward

NULL = 10


class RecordingModel:
    """Label-dependent eps (4 channels) and v (4 channels); records the batches it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append(y.clone())
        shift = y.float().view(-1, 1, 1, 1)
        eps = x * (1 + shift / 10) + torch.arange(4.0).view(1, 4, 1, 1) * shift
        v = torch.tanh(x + shift)
        return torch.cat([eps, v], dim=1)


def inputs(b=3):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(b, 4, 2, 2, generator=gen), torch.tensor([7, 100, 999][:b]), torch.tensor([1, 2, 3][:b])


def test_scale_one_is_the_conditional_model_and_skips_the_null_half():
    model = RecordingModel()
    x, t, y = inputs()
    out = guided_forward(model, x, t, y, scale=1.0, null_label=NULL, eps_channels=4)
    assert len(model.calls) == 1 and torch.equal(model.calls[0], y)
    assert torch.equal(out, RecordingModel()(x, t, y))


def test_guidance_runs_both_halves_in_one_batch():
    model = RecordingModel()
    x, t, y = inputs()
    out = guided_forward(model, x, t, y, scale=4.0, null_label=NULL, eps_channels=4)
    assert len(model.calls) == 1
    assert model.calls[0].tolist() == y.tolist() + [NULL] * 3
    cond, null = RecordingModel()(x, t, y), RecordingModel()(x, t, torch.full_like(y, NULL))
    torch.testing.assert_close(out[:, :4], null[:, :4] + 4.0 * (cond[:, :4] - null[:, :4]))
    assert torch.equal(out[:, 4:], cond[:, 4:])  # v from the conditional half


def test_three_and_four_channel_modes_differ_only_in_the_fourth_eps_channel():
    x, t, y = inputs()
    four = guided_forward(RecordingModel(), x, t, y, scale=3.0, null_label=NULL, eps_channels=4)
    three = guided_forward(RecordingModel(), x, t, y, scale=3.0, null_label=NULL, eps_channels=4,
                           guided_channels=3)
    cond = RecordingModel()(x, t, y)
    assert torch.equal(three[:, :3], four[:, :3])
    assert torch.equal(three[:, 3], cond[:, 3])  # DiT mode: the 4th channel is left conditional
    assert not torch.allclose(four[:, 3], cond[:, 3])
    assert torch.equal(three[:, 4:], four[:, 4:])


def test_bad_guided_channels_and_output_are_rejected():
    x, t, y = inputs()
    with pytest.raises(ValueError, match="guided_channels must be in 1..4"):
        guided_forward(RecordingModel(), x, t, y, scale=2.0, null_label=NULL, eps_channels=4, guided_channels=5)
    with pytest.raises(ValueError, match="model output has 3 channels"):
        guided_forward(lambda x, t, y: x[:, :3].repeat(1, 1, 1, 1), x, t, y, scale=2.0, null_label=NULL,
                       eps_channels=4)


def test_guided_model_plugs_into_the_sampler():
    diffusion = create_diffusion("ddim5")
    x, _, y = inputs()
    noise = torch.randn(3, 4, 2, 2)
    plain = diffusion.ddim_sample_loop(RecordingModel(), noise.shape, noise=noise, model_kwargs={"y": y})
    guided = functools.partial(guided_forward, RecordingModel(), scale=1.0, null_label=NULL, eps_channels=4)
    same = diffusion.ddim_sample_loop(guided, noise.shape, noise=noise, model_kwargs={"y": y})
    assert torch.equal(plain, same)
    strong = functools.partial(guided_forward, RecordingModel(), scale=4.0, null_label=NULL, eps_channels=4)
    assert not torch.allclose(diffusion.ddim_sample_loop(strong, noise.shape, noise=noise, model_kwargs={"y": y}),
                              plain)
