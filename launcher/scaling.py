"""The scaling-experiment runner: a YAML lists training runs (preset x resolution x backbone); each
is submitted with the launcher, evaluated with the evaluation sweep, and the runs' FLOPs, images/s,
peak memory and FIDs are collected into one results table with the FID-vs-step / vs-guidance /
vs-GFLOPs plots.

    submit    submit every run that is not finished or active (run id = the run's name); a run that
              warm-starts from another one waits until that one has committed its last step
    evaluate  the evaluation sweep over each run's committed checkpoints (<run_dir>/eval/<name>/)
    collect   one table and plots over all runs (<run_dir>/results.*, <run_dir>/plots/)

Every step can be rerun at any time: submitting names the same runs (training resumes), the
sweeps compute only what is missing, collecting rereads everything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from lamamba import storage
from lamamba.config import ConfigError, load_config
from lamamba.experiments.config import EvalSweepConfig
from launcher.errors import LaunchError


@dataclass
class ScalingRun:
    """One training run of the sweep."""

    name: str  # the run id under submit.runs_root, and the label in the table
    config: str  # a training config YAML (configs/train/...)
    preset: str = ""  # model.preset ("" = the config's): S ... XL-release, DiT-S/2 ... DiT-XL/8
    resolution: int = 0  # image side in px (model.input_size = resolution / latent_downsample); 0 = the config's
    overrides: list[str] = field(default_factory=list)  # further dotted training overrides
    # Warm start: the name of another run of this sweep (its newest committed checkpoint when it has
    # reached its max_steps), or a checkpoint / run directory / .safetensors.
    warm_start: str = ""
    guided_channels: int | None = None  # for its evaluation sweep (DiT's protocol: 3); None = the sweep's

    def __post_init__(self):
        if not self.name or not self.config:
            raise ValueError("runs: every run needs a name and a config")
        if self.resolution < 0:
            raise ValueError(f"resolution: must be positive, got {self.resolution}")


@dataclass
class SubmitOptions:
    """How the training runs are submitted (the options of `lamamba submit`)."""

    backend: Literal["local", "slurm", "ray", "kuberay"] = "local"
    nodes: int = 1
    gpus_per_node: int = 1
    max_restarts: int = 0
    runs_root: str = ""  # "" = $LAMAMBA_RUNS_ROOT or ./runs
    python: str = ""  # "" = this interpreter (`python` on ray / kuberay)
    options: dict[str, Any] = field(default_factory=dict)  # partition, time, account, setup, address, image, ...


@dataclass
class ScalingSweepConfig:
    """Runs to train, how to submit them, and the evaluation sweep applied to each."""

    run_dir: str = "runs/scaling-sweep"
    runs: list[ScalingRun] = field(default_factory=list)
    submit: SubmitOptions = field(default_factory=SubmitOptions)
    latent_downsample: int = 8  # the autoencoder's factor (8 for the SD VAE; 1 for pixel-space digits)
    # The base of each run's evaluation sweep; train_run, label and run_dir are set per run.
    evaluate: EvalSweepConfig | None = None

    def __post_init__(self):
        names = [r.name for r in self.runs]
        if not names:
            raise ValueError("runs: list at least one run")
        if len(set(names)) != len(names):
            raise ValueError(f"runs: names must be unique, got {names}")
        for run in self.runs:
            if run.resolution % self.latent_downsample:
                raise ValueError(f"runs.{run.name}.resolution: {run.resolution} is not divisible by "
                                 f"latent_downsample {self.latent_downsample}")
            if run.warm_start == run.name:
                raise ValueError(f"runs.{run.name}.warm_start: a run cannot start from itself")

    @property
    def runs_root(self) -> str:
        from launcher import runs

        return self.submit.runs_root or runs.default_runs_root()

    def run_dir_of(self, run: ScalingRun) -> str:
        from launcher import runs

        return runs.resolve_run_dir(self.runs_root, run.name)

    def by_name(self, name: str) -> ScalingRun | None:
        return next((r for r in self.runs if r.name == name), None)


def load_scaling_config(path: str | None, overrides: list[str]) -> ScalingSweepConfig:
    return load_config(ScalingSweepConfig, path, overrides)


def training_overrides(cfg: ScalingSweepConfig, run: ScalingRun) -> list[str]:
    """The dotted overrides that make ``run`` out of its training config."""
    out = list(run.overrides)
    if run.preset:
        out.append(f"model.preset={run.preset}")
    if run.resolution:
        out.append(f"model.input_size={run.resolution // cfg.latent_downsample}")
    if run.warm_start:
        source = cfg.by_name(run.warm_start)
        out.append(f"init_from={cfg.run_dir_of(source) if source else run.warm_start}")
    return out


def _finished(cfg: ScalingSweepConfig, run: ScalingRun) -> bool:
    """Whether ``run`` has committed a checkpoint at its max_steps."""
    from lamamba.experiments.eval_sweep import committed_checkpoints

    run_dir = cfg.run_dir_of(run)
    steps = committed_checkpoints(run_dir)
    if not steps:
        return False
    return max(steps) >= _train_config(cfg, run).max_steps


def _train_config(cfg: ScalingSweepConfig, run: ScalingRun):
    from launcher.jobs import load_job_config

    return load_job_config("train", run.config, training_overrides(cfg, run))


def submit(cfg: ScalingSweepConfig, dry_run: bool = False) -> list[str]:
    """Submit every run that can start; returns one line per run saying what happened."""
    from launcher import launch, runs

    s = cfg.submit
    remote = s.backend in ("ray", "kuberay")
    lines = []
    for run in cfg.runs:
        source = cfg.by_name(run.warm_start) if run.warm_start else None
        if source is not None and not dry_run and not _finished(cfg, source):
            lines.append(f"{run.name}: waiting for {source.name} to finish (warm start); submit again later")
            continue
        outcome = runs.read_outcome(cfg.run_dir_of(run))
        if outcome and outcome.get("state") == runs.SUCCEEDED and not dry_run:
            lines.append(f"{run.name}: finished")
            continue
        try:
            submitted = launch.submit_run(
                "train", run.config, training_overrides(cfg, run), s.backend, nodes=s.nodes,
                gpus_per_node=s.gpus_per_node, max_restarts=s.max_restarts,
                python=s.python or ("python" if remote else sys.executable), runs_root=cfg.runs_root,
                run_id=run.name, options=s.options, dry_run=dry_run)
        except LaunchError as err:
            lines.append(f"{run.name}: not submitted: {err}")
            continue
        if submitted.record is None:
            lines.append(f"{run.name}: would submit\n{submitted.artifact}")
        else:
            lines.append(f"{run.name}: submitted to {s.backend} (run dir {submitted.record.run_dir})")
    return lines


def eval_sweep_config(cfg: ScalingSweepConfig, run: ScalingRun) -> EvalSweepConfig:
    """The evaluation sweep of one run: the sweep's base with this run's checkpoints and names."""
    if cfg.evaluate is None:
        raise ConfigError("evaluate: give the evaluation sweep's base settings (guidance_scales, sample, evaluate)")
    base = cfg.evaluate
    sample = base.sample if run.guided_channels is None else dataclasses.replace(
        base.sample, guided_channels=run.guided_channels)
    return dataclasses.replace(base, train_run=cfg.run_dir_of(run), label=run.name, checkpoints=[],
                               run_dir=storage.join(cfg.run_dir, "eval", run.name), sample=sample)


def evaluate_runs(cfg: ScalingSweepConfig) -> list[str]:
    """The evaluation sweep of every run that has committed checkpoints."""
    from lamamba.experiments.eval_sweep import committed_checkpoints, run_eval_sweep

    lines = []
    for run in cfg.runs:
        if not committed_checkpoints(cfg.run_dir_of(run)):
            lines.append(f"{run.name}: no committed checkpoint yet")
            continue
        result = run_eval_sweep(eval_sweep_config(cfg, run))
        sampled = sum(len(v) for v in result["computed"].values())
        lines.append(f"{run.name}: {len(result['rows'])} points ({sampled} shards sampled now)")
    return lines


def training_figures(run_dir: str) -> dict[str, float | None]:
    """Images/s (median of the logged intervals after the first, which holds start-up) and peak
    memory (the largest logged) of a run, from its metrics.jsonl."""
    url = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(url):
        return {"images_per_s": None, "peak_memory_gib": None}
    records = [json.loads(line) for line in storage.read_bytes(url).decode().splitlines() if line.strip()]
    speeds = sorted(r["images_per_s"] for r in records[1:] or records
                    if isinstance(r.get("images_per_s"), (int, float)) and math.isfinite(r["images_per_s"]))
    memory = [r["peak_memory_gib"] for r in records if isinstance(r.get("peak_memory_gib"), (int, float))]
    return {"images_per_s": speeds[len(speeds) // 2] if speeds else None,
            "peak_memory_gib": max(memory) if memory else None}


def collect(cfg: ScalingSweepConfig) -> dict[str, str]:
    """One table and plots over every run: its evaluated points (or, before any evaluation, one
    row with its FLOPs), with the run's images/s and peak memory."""
    from lamamba.experiments.eval_sweep import publish
    from lamamba.experiments.results import ResultRow, read_table
    from lamamba.models.flops import count_flops

    rows = []
    for run in cfg.runs:
        figures = training_figures(cfg.run_dir_of(run))
        table = storage.join(cfg.run_dir, "eval", run.name, "results.json")
        run_rows = read_table(table) if storage.exists(table) else []
        if not run_rows:
            model = _train_config(cfg, run).model
            counted = count_flops(model)
            run_rows = [ResultRow(label=run.name, checkpoint="", step=None, guidance_scale=1.0, sampler="", n=0,
                                  gflops=round(counted["gflops"], 6), params=counted["params"])]
        rows += [dataclasses.replace(r, **figures) for r in run_rows]
    return publish(rows, cfg.run_dir)
