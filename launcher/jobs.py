"""The jobs the launcher can submit: each job's config class and how its process is started.

A job is a ``lamamba JOB CONFIG [key=value ...]`` command whose config is a dataclass tree with a
top-level ``run_dir``. Training is the one distributed job: it runs one process per GPU under
torchrun; encode, sample and evaluate are single processes that fan out with Ray themselves.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from lamamba.config import ConfigError, load_config


@dataclass(frozen=True)
class JobSpec:
    name: str
    config_class: str  # "module:Class"
    distributed: bool  # True: one process per GPU under torchrun (needs --gpus-per-node)
    summary: str

    def load_class(self) -> type:
        module_name, cls_name = self.config_class.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"job {self.name!r} is not available: cannot import {module_name} ({err})") from None
        return getattr(module, cls_name)


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec("encode", "data_pipeline.config:EncodeConfig", False,
                "encode images to VAE latent shards (Ray tasks)"),
        JobSpec("train", "lamamba.training.config:TrainConfig", True,
                "train a model with DeepSpeed, one rank per GPU (torchrun)"),
        JobSpec("sample", "lamamba.evaluation.config:SampleConfig", False,
                "sample images from a checkpoint for evaluation (Ray tasks)"),
        JobSpec("evaluate", "lamamba.evaluation.config:EvalConfig", False,
                "compute FID, sFID, IS, precision and recall of a sample set"),
    )
}


def get_job(name: str) -> JobSpec:
    try:
        return JOBS[name]
    except KeyError:
        raise ConfigError(f"unknown job {name!r} (jobs: {', '.join(JOBS)})") from None


def load_job_config(job: str, config_path: str | None, overrides: list[str]) -> Any:
    """Load and validate a job's config; ``run_dir`` is the launcher's to set, not the user's."""
    if any(o.split("=", 1)[0].strip() == "run_dir" for o in overrides):
        raise ConfigError("run_dir is fixed by the launcher: use --runs-root and --run-id instead")
    return load_config(get_job(job).load_class(), config_path, overrides)


def job_command(job: str, config_path: str, run_dir: str, python: str = sys.executable) -> list[str]:
    """The command line of one job process (training: of one rank, under torchrun)."""
    return [python, "-m", "launcher.cli", job, config_path, f"run_dir={run_dir}"]
