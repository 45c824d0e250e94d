"""Closed-form checks of the diffusion's math against textbook formulas derived independently."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from lamamba.config import load_config
from lamamba.diffusion import (DiffusionConfig, GaussianDiffusion, beta_schedule, create_diffusion, respace,
                               space_timesteps, training_draws)
from lamamba.diffusion.likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl


def textbook_alpha_bar(num_timesteps=1000):
    betas = np.linspace(1e-4 * 1000 / num_timesteps, 0.02 * 1000 / num_timesteps, num_timesteps)
    return np.cumprod(1.0 - betas)


# -- schedules and factory -----------------------------------------------------------------------

def test_linear_schedule_endpoints_scale_with_steps():
    b = beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b500 = beta_schedule("linear", 500)
    assert b500[0] == pytest.approx(2e-4) and b500[-1] == pytest.approx(0.04)


def test_cosine_schedule_follows_cos_squared():
    T = 1000
    abar = np.cumprod(1.0 - beta_schedule("cosine", T))
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert abar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert beta_schedule("cosine", T).max() <= 0.999


def test_unknown_schedule_and_too_few_steps_are_rejected():
    with pytest.raises(ValueError, match="noise_schedule 'quadratic'"):
        beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="at least 2 steps"):
        beta_schedule("linear", 1)
    with pytest.raises(ValueError, match="more than 20 steps"):
        beta_schedule("linear", 20)


def test_create_diffusion_defaults_and_config():
    d = create_diffusion()
    assert d.num_timesteps == 1000 and d.variance_type == "learned_range"
    np.testing.assert_allclose(d.alphas_cumprod, textbook_alpha_bar(), rtol=1e-12)
    cfg = load_config(DiffusionConfig, None, ["steps=100", "learn_sigma=false", "timestep_respacing=ddim10"])
    d = create_diffusion(**dataclasses.asdict(cfg))
    assert d.num_timesteps == 10 and d.variance_type == "fixed_large"
    assert list(d.timestep_map) == list(range(0, 100, 10))
    assert create_diffusion(learn_sigma=False, sigma_small=True).variance_type == "fixed_small"
    assert create_diffusion(diffusion_steps=50).num_timesteps == 50
    with pytest.raises(ValueError, match="disagree"):
        create_diffusion(diffusion_steps=50, steps=100)


# -- forward process and posterior ---------------------------------------------------------------

def test_q_sample_mean_and_variance():
    d = create_diffusion()
    abar = textbook_alpha_bar()
    t = torch.tensor([0, 250, 999])
    x0 = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    xt = d.q_sample(x0[:, None].expand(3, n), t, torch.randn(3, n, generator=gen, dtype=torch.float64))
    mean, var, log_var = d.q_mean_variance(x0[:, None], t)
    for i, ti in enumerate(t.tolist()):
        assert mean[i, 0].item() == pytest.approx(math.sqrt(abar[ti]) * x0[i].item(), rel=1e-12)
        assert var[i, 0].item() == pytest.approx(1 - abar[ti], rel=1e-12)
        assert log_var[i, 0].item() == pytest.approx(math.log(1 - abar[ti]), rel=1e-12)
        standard_error = math.sqrt(1 - abar[ti]) / math.sqrt(n)
        assert xt[i].mean().item() == pytest.approx(mean[i, 0].item(), abs=4 * standard_error + 1e-12)
        assert xt[i].var().item() == pytest.approx(1 - abar[ti], rel=0.02)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from the product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0)."""
    d = create_diffusion()
    abar = textbook_alpha_bar()
    betas = beta_schedule("linear", 1000)
    ts = [1, 10, 500, 999]
    x0 = torch.tensor([0.3, -0.5, 1.5, 0.0], dtype=torch.float64)[:, None]
    xt = torch.tensor([1.1, 0.2, -0.7, 2.5], dtype=torch.float64)[:, None]
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, torch.tensor(ts))
    for i, t in enumerate(ts):
        precision = 1 / (1 - abar[t - 1]) + (1 - betas[t]) / betas[t]
        expected_var = 1 / precision
        expected_mean = expected_var * (math.sqrt(abar[t - 1]) * x0[i, 0].item() / (1 - abar[t - 1])
                                        + math.sqrt(1 - betas[t]) * xt[i, 0].item() / betas[t])
        assert var[i, 0].item() == pytest.approx(expected_var, rel=1e-9)
        assert log_var[i, 0].item() == pytest.approx(math.log(expected_var), rel=1e-9)
        assert mean[i, 0].item() == pytest.approx(expected_mean, rel=1e-9, abs=1e-12)
    # t = 0: x_{-1} is x_0 itself (variance 0), the log variance is clipped to beta~_1's.
    mean0, var0, log_var0 = d.q_posterior_mean_variance(x0[:1], xt[:1], torch.tensor([0]))
    assert mean0.item() == pytest.approx(x0[0, 0].item()) and var0.item() == 0.0
    assert log_var0.item() == pytest.approx(math.log(d.posterior_variance[1]))


def test_xstart_eps_round_trip():
    d = create_diffusion()
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 5, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 3, 200, 700, 999])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_xstart_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(d.predict_eps_from_xstart(xt, t, x0), eps)


# -- divergences and likelihoods -----------------------------------------------------------------

def test_normal_kl():
    gen = torch.Generator().manual_seed(2)
    m1, m2, lv1, lv2 = torch.randn(4, 100, generator=gen, dtype=torch.float64)
    assert normal_kl(m1, lv1, m1, lv1).abs().max().item() < 1e-12
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    assert normal_kl(torch.tensor(0.0), 0.0, 1.0, 0.0).item() == pytest.approx(0.5)


def adm_cdf(z):
    """ADM's tanh approximation of the standard normal CDF, written out in float64 numpy."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))


def exact_cdf(z):
    return np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in np.ravel(z)]).reshape(np.shape(z))


CLOSED_FORM_CDFS = {"adm_tanh": adm_cdf, "exact": exact_cdf}


def closed_form_log_likelihood(x, mean, scale, cdf):
    """log P(bin of x) for N(mean, scale^2) on the 256-level grid of [-1, 1], outer bins open-ended."""
    plus, minus = cdf((x - mean + 1 / 255) / scale), cdf((x - mean - 1 / 255) / scale)
    mass = np.where(x < -0.999, plus, np.where(x > 0.999, 1.0 - minus, plus - minus))
    return np.log(np.maximum(mass, 1e-12))


def test_adm_cdf_is_its_tanh_formula_and_close_to_the_normal_cdf():
    from lamamba.diffusion.likelihood import approx_standard_normal_cdf

    z = np.linspace(-6, 6, 1201)
    got = approx_standard_normal_cdf(torch.tensor(z)).numpy()
    np.testing.assert_allclose(got, adm_cdf(z), rtol=0, atol=1e-15)
    error = np.abs(got - exact_cdf(z))
    assert 1e-5 < error.max() < 1e-3  # an approximation, not the CDF itself


@pytest.mark.parametrize("cdf", ["adm_tanh", "exact"])
@pytest.mark.parametrize("mean,log_scale", [(0.0, math.log(0.1)), (0.95, math.log(0.3)),
                                            (-1.0, math.log(0.002)), (0.2, math.log(3.0))])
def test_discretized_log_likelihood_against_its_closed_form(cdf, mean, log_scale):
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale), cdf=cdf)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    expected = closed_form_log_likelihood(x.numpy(), mean, math.exp(log_scale), CLOSED_FORM_CDFS[cdf])
    likely = expected > math.log(1e-10)  # where the mass is above the clamping
    np.testing.assert_allclose(logp.numpy()[likely], expected[likely], rtol=1e-6, atol=1e-9)


def test_discretized_log_likelihood_default_is_adm_and_rejects_unknown_cdfs():
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    mean, log_scale = torch.full_like(x, 0.1), torch.full_like(x, math.log(0.05))
    default = discretized_gaussian_log_likelihood(x, mean, log_scale)
    torch.testing.assert_close(default, discretized_gaussian_log_likelihood(x, mean, log_scale, cdf="adm_tanh"))
    assert not torch.allclose(default, discretized_gaussian_log_likelihood(x, mean, log_scale, cdf="exact"))
    with pytest.raises(ValueError, match="decoder cdf 'erf'"):
        discretized_gaussian_log_likelihood(x, mean, log_scale, cdf="erf")


# -- reverse process and losses ------------------------------------------------------------------

@pytest.mark.parametrize("decoder_cdf", [None, "adm_tanh", "exact"])
def test_vb_at_t0_is_the_decoder_nll_with_the_configured_cdf(decoder_cdf):
    kwargs = {} if decoder_cdf is None else {"decoder_cdf": decoder_cdf}
    d = create_diffusion(**kwargs)
    cdf = decoder_cdf or "adm_tanh"  # ADM's approximation by default
    assert d.decoder_cdf == cdf and respace(d, "10").decoder_cdf == cdf
    gen = torch.Generator().manual_seed(5)
    x0 = (torch.randint(0, 256, (3, 2, 4, 4), generator=gen).double() / 127.5 - 1.0)
    noise = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    out = 0.1 * torch.randn(3, 4, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.zeros(3, dtype=torch.long)
    vb = d.training_losses(_constant_model(out), x0, t, noise=noise)["vb"]
    pred = d.prediction_from_output(out, d.q_sample(x0, t, noise), t)
    expected = -closed_form_log_likelihood(x0.numpy(), pred.mean.numpy(), np.exp(0.5 * pred.log_variance.numpy()),
                                           CLOSED_FORM_CDFS[cdf]).mean(axis=(1, 2, 3)) / math.log(2)
    np.testing.assert_allclose(vb.numpy(), expected, rtol=1e-6)


def test_decoder_cdf_is_a_config_key_and_unknown_values_are_refused():
    cfg = load_config(DiffusionConfig, None, ["decoder_cdf=exact"])
    assert create_diffusion(**dataclasses.asdict(cfg)).decoder_cdf == "exact"
    assert DiffusionConfig().decoder_cdf == "adm_tanh"
    with pytest.raises(ValueError, match="decoder_cdf"):
        create_diffusion(decoder_cdf="erf")


def test_learned_range_interpolates_between_the_bounds():
    d = create_diffusion()
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 900])
    for v, expected in ((-1.0, d.posterior_log_variance_clipped), (1.0, np.log(d.betas))):
        out = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)
        pred = d.prediction_from_output(out, x, t)
        for i, ti in enumerate(t.tolist()):
            assert torch.allclose(pred.log_variance[i], torch.tensor(expected[ti], dtype=torch.float64))
    out = torch.cat([torch.zeros_like(x), torch.zeros_like(x)], dim=1)
    mid = d.prediction_from_output(out, x, t).log_variance[:, 0, 0, 0].numpy()
    np.testing.assert_allclose(mid, 0.5 * (d.posterior_log_variance_clipped[t] + np.log(d.betas[t])))


def test_fixed_variances():
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 500])
    large = create_diffusion(learn_sigma=False).prediction_from_output(torch.zeros_like(x), x, t)
    small = create_diffusion(learn_sigma=False, sigma_small=True).prediction_from_output(torch.zeros_like(x), x, t)
    d = create_diffusion()
    assert large.variance[0, 0, 0, 0].item() == pytest.approx(d.posterior_variance[1])
    assert large.variance[1, 0, 0, 0].item() == pytest.approx(d.betas[500])
    assert small.variance[1, 0, 0, 0].item() == pytest.approx(d.posterior_variance[500])


def _constant_model(output, seen_t=None):
    def model(x, t, **kwargs):
        if seen_t is not None:
            seen_t.append(t.clone())
        return output
    return model


def test_training_losses_hybrid_objective():
    d = create_diffusion()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 2, 3, 3, generator=gen) * 2 - 1
    noise = torch.randn(4, 2, 3, 3, generator=gen)
    t = torch.tensor([0, 1, 400, 999])
    out = (0.3 * torch.randn(4, 4, 3, 3, generator=gen)).requires_grad_()
    losses = d.training_losses(_constant_model(out), x0, t, noise=noise)
    assert set(losses) == {"loss", "mse", "vb"} and all(v.shape == (4,) for v in losses.values())
    torch.testing.assert_close(losses["mse"], mean_flat((noise - out[:, :2]) ** 2))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])

    # Textbook vb: KL in bits/dim for t > 0, decoder NLL in bits/dim at t = 0.
    xt = d.q_sample(x0, t, noise)
    pred = d.prediction_from_output(out.detach(), xt, t)
    true_mean, _, true_log_var = d.q_posterior_mean_variance(x0, xt, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, pred.mean, pred.log_variance)) / math.log(2)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, pred.mean, 0.5 * pred.log_variance)) / math.log(2)
    torch.testing.assert_close(losses["vb"][1:], kl[1:].detach())
    torch.testing.assert_close(losses["vb"][:1], nll[:1].detach())

    # The vb term trains only the variance channels: eps_hat is detached inside it.
    losses["vb"].sum().backward()
    assert out.grad[:, :2].abs().max().item() == 0.0
    assert out.grad[:, 2:].abs().max().item() > 0.0


def test_training_losses_fixed_variance_and_shape_errors():
    d = create_diffusion(learn_sigma=False)
    x0 = torch.zeros(2, 3, 2, 2)
    losses = d.training_losses(_constant_model(torch.ones(2, 3, 2, 2)), x0, torch.tensor([5, 6]),
                               noise=torch.zeros_like(x0))
    assert torch.equal(losses["vb"], torch.zeros(2)) and torch.allclose(losses["mse"], torch.ones(2))
    with pytest.raises(ValueError, match="needs 3 channels"):
        d.training_losses(_constant_model(torch.ones(2, 6, 2, 2)), x0, torch.tensor([5, 6]))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        d.training_losses(_constant_model(torch.ones(2, 3, 2, 2)), x0, torch.tensor([5]))


def test_respaced_training_calls_model_with_original_timesteps():
    d = create_diffusion("ddim50")
    seen = []
    x0 = torch.zeros(3, 1, 2, 2)
    d.training_losses(_constant_model(torch.zeros(3, 2, 2, 2), seen), x0, torch.tensor([0, 1, 49]))
    assert seen[0].tolist() == [0, 20, 980]


# -- respacing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["250", "ddim50", "10,10,10", "1000", "7"])
def test_respaced_alpha_bars_equal_the_original_at_kept_steps(spec):
    base = create_diffusion()
    spaced = respace(base, spec)
    kept = space_timesteps(1000, spec)
    assert list(spaced.timestep_map) == kept and spaced.num_timesteps == len(kept)
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    # Respacing a respaced diffusion composes the maps.
    twice = respace(spaced, "ddim5") if spaced.num_timesteps >= 10 else spaced
    np.testing.assert_allclose(twice.alphas_cumprod, base.alphas_cumprod[twice.timestep_map], rtol=1e-12)


def test_space_timesteps_syntax():
    assert space_timesteps(1000, "250")[:4] == [0, 4, 8, 12] and space_timesteps(1000, "250")[-1] == 999
    assert len(space_timesteps(1000, "250")) == 250
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    assert space_timesteps(100, "") == list(range(100))
    assert space_timesteps(100, [1, 1]) == [0, 50]
    for bad, match in (("abc", "expected"), ("ddim3000", "no integer stride"), ("ddimx", "ddimN"),
                       ("5,2000", "cannot take 2000"), ("0", ">= 1")):
        with pytest.raises(ValueError, match=match):
            space_timesteps(1000, bad)


# -- keyed draws ---------------------------------------------------------------------------------

def test_training_draws_are_keyed_per_sample():
    keys = [(i, 0) for i in range(6)]
    t, noise = training_draws(7, keys, 1000, (2, 3, 3))
    assert t.dtype == torch.int64 and t.shape == (6,) and ((t >= 0) & (t < 1000)).all()
    assert noise.shape == (6, 2, 3, 3)
    t2, noise2 = training_draws(7, keys[4:], 1000, (2, 3, 3))
    assert torch.equal(t2, t[4:]) and torch.equal(noise2, noise[4:])
    t3, _ = training_draws(7, [(i, 1) for i in range(6)], 1000, (2, 3, 3))
    assert not torch.equal(t3, t)


def test_gaussian_diffusion_rejects_bad_inputs():
    with pytest.raises(ValueError, match="variance_type"):
        GaussianDiffusion(beta_schedule("linear", 100), "learned")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GaussianDiffusion(np.array([0.1, 1.0]))
    with pytest.raises(ValueError, match="timestep_map"):
        GaussianDiffusion(beta_schedule("linear", 100), timestep_map=[0, 1])
