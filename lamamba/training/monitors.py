"""Training metrics, kept apart from the loop: the trainer reports one :class:`StepStats` per step,
an :class:`IntervalMeter` turns an interval of them into the logged figures, and sinks write them
(a plain-text line, ``metrics.jsonl`` and TensorBoard on rank 0).

Throughput figures: images/s = global-batch images / the sum of the interval's step times, where a
step's time covers the whole optimizer step as the loop runs it (data wait, forward, backward,
optimizer step, metric all-reduce, EMA update, logging) and leaves out only checkpoint saves and
sample grids (the trainer's clock); MFU = images/s x 6 x forward FLOPs per
image (``count_flops`` counts a multiply-add as one FLOP, so x2 for FLOPs and x3 for forward +
backward; activation recomputation is not counted, as usual) / (peak FLOP/s x number of devices).
"""

from __future__ import annotations

import json
import math
import os
import resource
from dataclasses import dataclass, field

import torch

from lamamba.training.step import NUM_QUARTERS


@dataclass
class StepStats:
    """The global (all-rank) figures of one optimizer step."""

    step: int
    loss: float
    mse: float
    vb: float
    quarter_loss_sum: list[float]  # sum of per-sample losses with t in each quarter of [0, T)
    quarter_count: list[float]
    grad_norm: float | None
    lr: float
    skipped: bool
    images: int
    step_time: float  # seconds from the previous step's end to this step's EMA update, minus saves/samples
    data_time: float  # seconds of it spent waiting for the batch


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory allocated, or this process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


@dataclass
class IntervalMeter:
    """Accumulates :class:`StepStats` between two log points."""

    train_flops_per_image: float  # forward + backward FLOPs of one image
    peak_flops: float  # of the whole job (per-device peak x devices); 0 = no MFU
    device: torch.device
    steps: list[StepStats] = field(default_factory=list)

    def add(self, stats: StepStats) -> None:
        self.steps.append(stats)

    def flush(self, skipped_total: int) -> dict[str, float]:
        """The interval's figures (means over its samples / steps) and reset."""
        steps, self.steps = self.steps, []
        applied = [s for s in steps if not s.skipped]
        images = sum(s.images for s in steps)
        seconds = sum(s.step_time for s in steps)
        out: dict[str, float] = {"step": steps[-1].step}
        weights = [s.images for s in applied]
        for key in ("loss", "mse", "vb"):
            out[key] = (sum(getattr(s, key) * w for s, w in zip(applied, weights)) / sum(weights)
                        if applied else math.nan)
        for q in range(NUM_QUARTERS):
            n = sum(s.quarter_count[q] for s in applied)
            out[f"loss_q{q}"] = sum(s.quarter_loss_sum[q] for s in applied) / n if n else math.nan
        norms = [s.grad_norm for s in applied if s.grad_norm is not None]
        out["grad_norm"] = sum(norms) / len(norms) if norms else math.nan
        out["lr"] = steps[-1].lr
        out["images_per_s"] = images / seconds if seconds > 0 else math.nan
        out["data_wait_share"] = sum(s.data_time for s in steps) / seconds if seconds > 0 else math.nan
        if self.peak_flops > 0:
            out["mfu"] = out["images_per_s"] * self.train_flops_per_image / self.peak_flops
        out["peak_memory_gib"] = peak_memory_gib(self.device)
        out["skipped_steps"] = float(skipped_total)
        return out


# TensorBoard tag of each figure.
TB_TAGS = {
    "loss": "train/loss", "mse": "train/mse", "vb": "train/vb",
    **{f"loss_q{q}": f"train/loss_t_quarter{q}" for q in range(NUM_QUARTERS)},
    "grad_norm": "train/grad_norm", "lr": "train/lr", "skipped_steps": "train/skipped_steps",
    "images_per_s": "perf/images_per_s", "mfu": "perf/mfu", "peak_memory_gib": "perf/peak_memory_gib",
    "data_wait_share": "perf/data_wait_share",
}


def format_line(figures: dict[str, float]) -> str:
    """The plain-text log line of one interval."""
    parts = [f"step {int(figures['step'])}", f"loss {figures['loss']:.4f}", f"mse {figures['mse']:.4f}",
             f"vb {figures['vb']:.4f}", f"grad_norm {figures['grad_norm']:.3f}", f"lr {figures['lr']:.2e}",
             f"{figures['images_per_s']:.1f} img/s"]
    if "mfu" in figures:
        parts.append(f"mfu {100 * figures['mfu']:.1f}%")
    parts += [f"mem {figures['peak_memory_gib']:.2f} GiB", f"data wait {100 * figures['data_wait_share']:.0f}%",
              f"skipped {int(figures['skipped_steps'])}"]
    return " | ".join(parts)


class MetricsSinks:
    """Rank 0's outputs: ``<run_dir>/metrics.jsonl`` (one JSON object per interval) and
    TensorBoard events under ``<run_dir>/tb/``.

    A run that starts at ``start_step`` (resumed from that checkpoint) first drops the records
    after it that an interrupted earlier attempt logged, in both, so that every step appears once.
    """

    def __init__(self, run_dir: str, tensorboard: bool, start_step: int = 0):
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)
        self.jsonl = open(path, "a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the earlier attempt's events from this step on.
            self.writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step + 1)

    def scalars(self, figures: dict[str, float]) -> None:
        step = int(figures["step"])
        self.jsonl.write(json.dumps(figures) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, tag in TB_TAGS.items():
                if key in figures and math.isfinite(figures[key]):
                    self.writer.add_scalar(tag, figures[key], step)
            self.writer.flush()

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image: (3, H, W) float in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step)
            self.writer.flush()

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
