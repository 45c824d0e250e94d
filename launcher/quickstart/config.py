"""The quickstart's settings: the configs of the real jobs it chains, plus its own few knobs.

``launcher/quickstart/digits.yaml`` holds the tuned values; every field can be overridden with a
dotted ``key=value`` (``train.max_steps=200``). The paths that connect the stages (each job's
``run_dir``, the shard folder, the manifest, the checkpoint, the sample folder, the reference and
the classifier weights) are derived from ``run_dir`` when the run starts, so the jobs always read
what the previous stage wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline import EncodeConfig
from lamamba.config import load_config
from lamamba.evaluation.config import EvalConfig, SampleConfig
from lamamba.training.config import TrainConfig

# Package data next to this module, so an installed wheel has it too.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "digits.yaml"


@dataclass
class ClassifierConfig:
    """The digit classifier that replaces Inception (trained on the digits' train split)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    min_held_out_accuracy: float = 0.9  # below this the run stops: its metrics would mean little


@dataclass
class LaunchConfig:
    """How the training stage is started: ``nproc`` torchrun ranks of ``lamamba train``."""

    nproc: int = 1


@dataclass
class QuickstartConfig:
    """Every stage's job config; see launcher/quickstart/digits.yaml for the values used."""

    run_dir: str = "runs/quickstart"
    ray_cpus: int = 0  # the local Ray that encode and sample share; 0 = every core
    # torch/OpenMP threads of the quickstart process and of each training rank. Small models on a
    # few shared cores run fastest single-threaded: several threads spin-wait for each other.
    threads: int = 1
    grid_per_class: int = 10  # samples per row of samples.png
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


def load_quickstart_config(path: str | None, overrides: list[str]) -> QuickstartConfig:
    """The quickstart config from ``path`` (default: the packaged digits.yaml) and overrides."""
    return load_config(QuickstartConfig, path or DEFAULT_CONFIG, overrides)
