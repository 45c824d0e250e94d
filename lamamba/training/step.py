"""One optimizer step of the diffusion objective on this rank's share of a global batch.

The timestep, diffusion noise and label drop of every sample are drawn from generators keyed by
(seed, dataset index, epoch); the share is cut into micro-batches whose gradients DeepSpeed
accumulates. The step returns local sums (loss, mse, vb, per timestep quarter) that the caller
all-reduces into global figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lamamba.diffusion import training_draws
from lamamba.rng import PerSampleGenerators
from lamamba.training.engine import BatchPlan

NUM_QUARTERS = 4
# Layout of the sums vector: loss, mse, vb, samples, a free slot for the caller (the stop flag),
# then the loss sum and the sample count of each timestep quarter.
LOSS, MSE, VB, COUNT, STOP = 0, 1, 2, 3, 4
QSUM = 5
QCOUNT = QSUM + NUM_QUARTERS
VECTOR = QCOUNT + NUM_QUARTERS


@dataclass
class StepResult:
    sums: torch.Tensor  # (VECTOR,) float64 on the rank's device, this rank's sums
    grad_norm: float | None  # global, from DeepSpeed
    applied: bool  # False when DeepSpeed skipped the update (non-finite gradients)
    lr: float  # the learning rate the step used


class DiffusionTrainStep:
    """``step(batch) -> StepResult`` for a reader batch {"x", "y", "index", "epoch"}."""

    def __init__(self, engine, diffusion, plan: BatchPlan, seed: int, class_dropout_prob: float,
                 dtype: torch.dtype, device: torch.device):
        self.engine = engine
        self.diffusion = diffusion
        self.plan = plan
        self.seed = seed
        self.class_dropout_prob = class_dropout_prob
        self.dtype = dtype
        self.device = device

    def _model_fn(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, drop_mask: torch.Tensor) -> torch.Tensor:
        # The engine's module holds bf16 weights under bf16; the loss is computed in fp32.
        return self.engine(x.to(self.dtype), t, y, drop_mask=drop_mask).float()

    def __call__(self, batch: dict[str, torch.Tensor]) -> StepResult:
        keys = list(zip(batch["index"].tolist(), batch["epoch"].tolist()))
        x = batch["x"].to(self.device)
        y = batch["y"].to(self.device)
        num_t = self.diffusion.num_timesteps
        t, noise = training_draws(self.seed, keys, num_t, x.shape[1:], device=self.device)
        drop = PerSampleGenerators(self.seed, "label_drop", keys).rand(device=self.device) < self.class_dropout_prob
        lr = float(self.engine.get_lr()[0])
        # The sums stay on the device: no host synchronisation per micro-batch.
        sums = torch.zeros(VECTOR, dtype=torch.float64, device=self.device)
        mb = self.plan.micro_batch
        for start in range(0, x.shape[0], mb):
            part = slice(start, start + mb)
            terms = self.diffusion.training_losses(self._model_fn, x[part], t[part], noise=noise[part],
                                                   model_kwargs={"y": y[part], "drop_mask": drop[part]})
            self.engine.backward(terms["loss"].mean())
            self.engine.step()  # applies the update at the last micro-batch only
            loss = terms["loss"].detach().double()
            sums[LOSS] += loss.sum()
            sums[MSE] += terms["mse"].detach().double().sum()
            sums[VB] += terms["vb"].detach().double().sum()
            sums[COUNT] += loss.numel()
            quarter = (t[part] * NUM_QUARTERS) // num_t
            sums[QSUM:QCOUNT].index_add_(0, quarter, loss)
            sums[QCOUNT:VECTOR].index_add_(0, quarter, torch.ones_like(loss))
        norm = self.engine.get_global_grad_norm()
        return StepResult(sums, None if norm is None else float(norm), bool(self.engine.was_step_applied()), lr)
