"""Gaussian diffusion as ADM / improved DDPM use it (Ho et al. 2020; Nichol & Dhariwal 2021).

Notation follows the papers, with t running 0..T-1 as in ADM (t = 0 is the first noising step):

    beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s <= t} alpha_s
    q(x_t | x_0)          = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),
        mu~_t   = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x_0
                  + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) x_t
        beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    p(x_{t-1} | x_t)      = N(mu~_t(x0_hat, x_t), Sigma_t),
        x0_hat = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps_hat
        log Sigma_t = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2  (learned range)

The model outputs eps_hat (the first C channels) and, with a learned variance, v (the next C).
Every coefficient is computed once in float64 and gathered per timestep. A respaced diffusion
(see ``respace.py``) is the same class with fewer betas and a ``timestep_map`` that turns its
indices back into the original timesteps the model was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from lamamba.diffusion.likelihood import DECODER_CDFS, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from lamamba.rng import PerSampleGenerators

VarianceType = Literal["learned_range", "fixed_large", "fixed_small"]
VARIANCE_TYPES = ("learned_range", "fixed_large", "fixed_small")

ModelFn = Callable[..., torch.Tensor]


@dataclass
class PosteriorPrediction:
    """The model's p(x_{t-1} | x_t): tensors of x's shape (B, C, H, W)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    eps: torch.Tensor


class GaussianDiffusion:
    """The forward process, its posterior, the model's reverse process, losses and samplers.

    betas: (T,) noise schedule. variance_type: "learned_range" (the model outputs v, 2 C
    channels), "fixed_large" (Sigma_t = beta_t, with beta~_1 at t = 0) or "fixed_small"
    (Sigma_t = beta~_t). timestep_map: (T,) the original timestep the model sees at each index
    (identity when None). decoder_cdf: the normal CDF of the t = 0 decoder NLL, "adm_tanh"
    (ADM's approximation, the default) or "exact".
    """

    def __init__(self, betas: Sequence[float] | np.ndarray, variance_type: VarianceType = "learned_range",
                 timestep_map: Sequence[int] | np.ndarray | None = None, decoder_cdf: str = "adm_tanh"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"betas must be a 1-D array of at least 2 steps, got shape {betas.shape}")
        if not ((betas > 0) & (betas < 1)).all():
            raise ValueError(f"betas must lie in (0, 1), got min {betas.min()}, max {betas.max()}")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {variance_type!r}; known: {list(VARIANCE_TYPES)}")
        if decoder_cdf not in DECODER_CDFS:
            raise ValueError(f"unknown decoder_cdf {decoder_cdf!r}; known: {list(DECODER_CDFS)}")
        self.variance_type = variance_type
        self.decoder_cdf = decoder_cdf
        self.num_timesteps = len(betas)
        self.timestep_map = (np.arange(self.num_timesteps) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        if self.timestep_map.shape != betas.shape:
            raise ValueError(f"timestep_map has {len(self.timestep_map)} entries for {len(betas)} betas")

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])

        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0: its log is clipped to beta~_1 (t = 0 is the decoder step, which never samples).
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas)
                                     / (1.0 - self.alphas_cumprod))

        # The learned range spans [log beta~_t (clipped), log beta_t]. The fixed variances are
        # beta_t ("large", beta~_1 at t = 0 so the decoder's variance stays finite, as in
        # improved DDPM) or beta~_t ("small").
        self.log_betas = np.log(betas)
        large = np.append(self.posterior_variance[1], betas[1:])
        self.fixed_variances = {
            "fixed_large": (large, np.log(large)),
            "fixed_small": (self.posterior_variance, self.posterior_log_variance_clipped),
        }

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _gather(coef: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """coef[t] broadcastable against ``like`` (B, ...), in like's dtype (at least float32)."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        # index_select: advanced indexing of a float64 tensor is ~1000x slower on CPU.
        out = torch.from_numpy(coef).to(t.device).index_select(0, t).to(dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original timesteps the model is conditioned on for indices t: (B,) -> (B,)."""
        return torch.from_numpy(self.timestep_map).to(t.device).index_select(0, t)

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")

    # -- forward process -----------------------------------------------------------------------

    def q_mean_variance(self, x_start: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_t | x_0): (mean, variance, log_variance), each broadcastable to x_start's shape."""
        mean = self._gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = self._gather(1.0 - self.alphas_cumprod, t, x_start)
        log_variance = self._gather(self.log_one_minus_alphas_cumprod, t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise; (B, ...) -> (B, ...)."""
        self._check_t(t, x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must match x_start {tuple(x_start.shape)}")
        return (self._gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor,
                                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0): (mean mu~_t, variance beta~_t, clipped log variance)."""
        mean = (self._gather(self.posterior_mean_coef1, t, x_t) * x_start
                + self._gather(self.posterior_mean_coef2, t, x_t) * x_t)
        variance = self._gather(self.posterior_variance, t, x_t)
        log_variance = self._gather(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- reverse process -----------------------------------------------------------------------

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps."""
        return (self._gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """The eps that maps x_t to ``pred_xstart`` (inverse of ``predict_xstart_from_eps``)."""
        return ((self._gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart)
                / self._gather(self.sqrt_recipm1_alphas_cumprod, t, x_t))

    def split_output(self, model_output: torch.Tensor,
                     x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, v) from a model output (B, 2C or C, ...); v is None without a learned variance."""
        channels = x_t.shape[1]
        expected = 2 * channels if self.variance_type == "learned_range" else channels
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[1] != expected \
                or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"model output {tuple(model_output.shape)} does not fit x_t {tuple(x_t.shape)}: "
                             f"variance_type={self.variance_type!r} needs {expected} channels")
        model_output = model_output.to(x_t.dtype)
        if self.variance_type == "learned_range":
            return model_output[:, :channels], model_output[:, channels:]
        return model_output, None

    def prediction_from_output(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                               clip_denoised: bool = False) -> PosteriorPrediction:
        """p(x_{t-1} | x_t) from a raw model output (B, 2C or C, ...) at x_t (B, C, ...)."""
        eps, v = self.split_output(model_output, x_t)
        if self.variance_type == "learned_range":
            min_log = self._gather(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._gather(self.log_betas, t, x_t)
            frac = (v + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            var, log_var = self.fixed_variances[self.variance_type]
            variance = self._gather(var, t, x_t).expand_as(x_t)
            log_variance = self._gather(log_var, t, x_t).expand_as(x_t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return PosteriorPrediction(mean=mean, variance=variance, log_variance=log_variance,
                                   pred_xstart=pred_xstart, eps=eps)

    def p_mean_variance(self, model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False, model_kwargs: dict | None = None) -> PosteriorPrediction:
        """Run the model at (x_t, t) and return p(x_{t-1} | x_t). x: (B, C, H, W), t: (B,) indices."""
        self._check_t(t, x)
        output = model_fn(x, self.model_timesteps(t), **(model_kwargs or {}))
        return self.prediction_from_output(output, x, t, clip_denoised)

    # -- losses --------------------------------------------------------------------------------

    def vb_terms_bpd(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor, clip_denoised: bool = False) -> torch.Tensor:
        """One term of the variational bound in bits per dimension, (B,).

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0; at t = 0 the discretised Gaussian
        decoder NLL -log p(x_0 | x_1) (with ``decoder_cdf``).
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        pred = self.prediction_from_output(model_output, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, pred.mean, pred.log_variance)) / math.log(2.0)
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
            x_start, means=pred.mean, log_scales=0.5 * pred.log_variance, cdf=self.decoder_cdf)) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(self, model: ModelFn, x_start: torch.Tensor, t: torch.Tensor,
                        model_kwargs: dict | None = None, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The hybrid objective of improved DDPM, per sample.

        x_start: (B, C, H, W) clean latents, t: (B,) indices, noise: (B, C, H, W) (drawn with the
        global generator when None). Returns {"loss", "mse", "vb"}, each (B,): mse = ||eps -
        eps_hat||^2 averaged over non-batch dims; vb = the bound term in bits/dim with eps_hat
        detached, so it trains only the variance (zero without a learned variance); loss = mse + vb
        (no 1/1000 rescaling of vb).
        """
        self._check_t(t, x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        eps, v = self.split_output(output, x_t)
        mse = mean_flat((noise - eps) ** 2)
        if v is None:
            vb = torch.zeros_like(mse)
        else:
            frozen = torch.cat([eps.detach(), v], dim=1)
            vb = self.vb_terms_bpd(frozen, x_start, x_t, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    # -- samplers ------------------------------------------------------------------------------

    def p_sample(self, model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 clip_denoised: bool = False, model_kwargs: dict | None = None) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t); at t = 0 the mean, no noise."""
        pred = self.p_mean_variance(model_fn, x, t, clip_denoised, model_kwargs)
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return pred.mean + nonzero * torch.exp(0.5 * pred.log_variance) * noise

    def ddim_sample(self, model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None,
                    eta: float = 0.0, clip_denoised: bool = False, model_kwargs: dict | None = None) -> torch.Tensor:
        """One DDIM step (Song et al. 2021, eq. 12) x_t -> x_{t-1}.

        sigma_t = eta sqrt((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t-1});
        x_{t-1} = sqrt(alpha_bar_{t-1}) x0_hat + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps_hat + sigma_t noise.
        ``noise`` may be None when eta == 0.
        """
        pred = self.p_mean_variance(model_fn, x, t, clip_denoised, model_kwargs)
        # eps consistent with the (possibly clipped) x0_hat.
        eps = self.predict_eps_from_xstart(x, t, pred.pred_xstart)
        alpha_bar = self._gather(self.alphas_cumprod, t, x)
        alpha_bar_prev = self._gather(self.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        direction = torch.sqrt((1 - alpha_bar_prev - sigma ** 2).clamp(min=0)) * eps
        sample = pred.pred_xstart * torch.sqrt(alpha_bar_prev) + direction
        if eta == 0.0:
            return sample
        if noise is None:
            raise ValueError("ddim_sample with eta > 0 needs noise")
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return sample + nonzero * sigma * noise

    def p_sample_loop(self, model_fn: ModelFn, shape: Sequence[int], noise: torch.Tensor | None = None,
                      model_kwargs: dict | None = None, generators: PerSampleGenerators | None = None,
                      progress: bool = False, clip_denoised: bool = False,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """Ancestral sampling from x_T ~ N(0, I) through every step; returns x_0 of ``shape``.

        model_fn(x (B, C, H, W), t (B,) original timesteps, **model_kwargs) -> (B, 2C or C, H, W).
        noise: the initial x_T (else drawn). generators: one keyed generator per sample, used for
        x_T and every step's noise, so sample i does not depend on the batch it is in.
        device: where to sample (default: noise's device, else CPU).
        """
        def step(x, t, draw):
            return self.p_sample(model_fn, x, t, draw(), clip_denoised, model_kwargs)
        return self._sample_loop(step, shape, noise, generators, progress, device, "DDPM sampling")

    def ddim_sample_loop(self, model_fn: ModelFn, shape: Sequence[int], noise: torch.Tensor | None = None,
                         model_kwargs: dict | None = None, generators: PerSampleGenerators | None = None,
                         progress: bool = False, clip_denoised: bool = False, eta: float = 0.0,
                         device: torch.device | str | None = None) -> torch.Tensor:
        """DDIM sampling (deterministic for eta = 0); arguments as for ``p_sample_loop``."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")

        def step(x, t, draw):
            return self.ddim_sample(model_fn, x, t, draw() if eta > 0 else None, eta, clip_denoised, model_kwargs)
        return self._sample_loop(step, shape, noise, generators, progress, device, "DDIM sampling")

    def _sample_loop(self, step, shape, noise, generators, progress, device, desc) -> torch.Tensor:
        """Run ``step(x, t, draw)`` from t = T-1 down to 0; ``draw()`` returns one step's noise."""
        shape = tuple(int(s) for s in shape)
        if device is None:
            device = noise.device if noise is not None else torch.device("cpu")
        if generators is not None and len(generators) != shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")

        def draw() -> torch.Tensor:
            if generators is not None:
                return generators.randn(shape[1:], device=device)
            return torch.randn(shape, device=device)

        if noise is None:
            x = draw()
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise {tuple(noise.shape)} does not match shape {shape}")
        else:
            x = noise.to(device)
        indices = range(self.num_timesteps - 1, -1, -1)
        for i in tqdm(indices, desc=desc, disable=not progress, leave=False):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                x = step(x, t, draw)
        return x
