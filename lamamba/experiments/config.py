"""The evaluation sweep's config (``lamamba evaluate-sweep CONFIG``).

The sweep evaluates every (checkpoint, guidance scale, sampler) point with the sample and evaluate
jobs: ``sample`` and ``evaluate`` are those jobs' own configs, used as the base of every point; the
sweep sets each point's checkpoint, scale, sampler and output places itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lamamba.evaluation.config import EvalConfig, SampleConfig


@dataclass
class SweepSampler:
    """One sampler setting of the sweep."""

    sampler: Literal["ddpm", "ddim"] = "ddpm"
    steps: int = 250
    eta: float = 0.0  # DDIM only

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps: must be positive, got {self.steps}")

    @property
    def name(self) -> str:
        return f"{self.sampler}{self.steps}" + (f"-eta{self.eta:g}" if self.sampler == "ddim" and self.eta else "")


@dataclass
class EvalSweepConfig:
    """Checkpoints x guidance scales x samplers, one shared reference and feature extractor."""

    run_dir: str = "runs/evaluate-sweep"
    # A training run directory (or its checkpoints directory): its committed checkpoints ...
    train_run: str = ""
    steps: list[int] = field(default_factory=list)  # ... those with these steps ([] = every committed one)
    # ... and/or explicit checkpoint directories or exported .safetensors (the step is read from a
    # step_XXXXXXXX component of the path, else left empty).
    checkpoints: list[str] = field(default_factory=list)
    label: str = ""  # the run's name in the table and plots; default: train_run's directory name
    guidance_scales: list[float] = field(default_factory=lambda: [1.5])
    samplers: list[SweepSampler] = field(default_factory=lambda: [SweepSampler()])
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    tensorboard: bool = True
    # Side-job mode (`--watch`): re-scan train_run every poll_s seconds and evaluate new committed
    # checkpoints until the step train_until_step is evaluated (0 = the run's max_steps).
    poll_s: float = 300.0
    train_until_step: int = 0

    def __post_init__(self):
        if not self.guidance_scales or any(s < 1.0 for s in self.guidance_scales):
            raise ValueError(f"guidance_scales: need at least one scale >= 1 (1 = unguided), got {self.guidance_scales}")
        if not self.samplers:
            raise ValueError("samplers: need at least one sampler")
        if self.sample.checkpoint or self.sample.out:
            raise ValueError("sample.checkpoint / sample.out: set by the sweep for each point; use train_run, "
                             "checkpoints and run_dir")
        if self.evaluate.samples or self.evaluate.out:
            raise ValueError("evaluate.samples / evaluate.out: set by the sweep for each point")
        if self.poll_s <= 0 or self.train_until_step < 0:
            raise ValueError(f"poll_s must be > 0 and train_until_step >= 0, got {self.poll_s}, {self.train_until_step}")
