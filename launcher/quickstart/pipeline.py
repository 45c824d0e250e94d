"""The quickstart: every real stage of the system, chained on scikit-learn's handwritten digits.

classifier -> encode (Ray) -> train (DeepSpeed under torchrun) -> sample -> evaluate -> report.
Each stage calls the same job code as its ``lamamba`` command, with its outputs under one
directory; the stages are connected only through files (manifest, checkpoint, sample shards), as
they would be on a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lamamba.config import save_config
from lamamba.evaluation.digit_classifier import ClassifierReport
from launcher.quickstart.config import QuickstartConfig
from launcher.quickstart.stages import StageClock, format_seconds
from lamamba.training.checkpointer import MARKER as CHECKPOINT_MARKER
from lamamba.training.checkpointer import step_dir_name

STAGES = ["classifier", "encode", "train", "sample", "evaluate", "report"]


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, all under the quickstart's ``run_dir``."""

    root: Path

    @property
    def classifier(self) -> Path:
        return self.root / "classifier" / "digit_classifier.safetensors"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def real_images(self) -> Path:
        return self.root / "reference" / "real_digits.npz"

    @property
    def reference(self) -> Path:
        return self.root / "reference" / "digits_reference.npz"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def grid(self) -> Path:
        return self.root / "samples.png"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"


@dataclass(frozen=True)
class Samples:
    """The generated images (N, H, W, C) uint8, their conditioning labels and the classifier's reading."""

    images: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray


def real_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits of ``split`` exactly as the encode job reads them: uint8 (N, 8, 8, 1), labels (N,)."""
    from data_pipeline.config import SourceConfig
    from data_pipeline.sources import list_source, load_image

    items = list_source(SourceConfig(kind="digits", split=split)).items
    images = np.stack([np.asarray(load_image(item)) for item in items])[..., None]
    return images, np.array([item.label for item in items], dtype=np.int64)


def _connect(cfg: QuickstartConfig, paths: Paths) -> QuickstartConfig:
    """Point each job at the previous stage's outputs and keep the stages consistent (see config.py)."""
    r = dataclasses.replace
    encode = r(cfg.encode, run_dir=str(paths.root / "encode"), output=str(paths.shards))
    train = r(cfg.train, run_dir=str(paths.train), data=r(cfg.train.data, manifest=str(paths.shards / "manifest.json")),
              autoencoder=cfg.encode.autoencoder)
    checkpoint = paths.train / "checkpoints" / step_dir_name(cfg.train.max_steps)
    sample = r(cfg.sample, run_dir=str(paths.root / "sample"), checkpoint=str(checkpoint), out=str(paths.samples),
               seed=cfg.train.seed, noise_schedule=cfg.train.diffusion.noise_schedule,
               diffusion_steps=cfg.train.diffusion.steps, autoencoder=cfg.encode.autoencoder)
    evaluate = r(cfg.evaluate, run_dir=str(paths.root / "evaluate"), samples=str(paths.samples),
                 reference=str(paths.reference), extractor=r(cfg.evaluate.extractor, weights=str(paths.classifier)),
                 build_reference=r(cfg.evaluate.build_reference, source=str(paths.real_images),
                                   resolution=cfg.encode.resolution))
    return r(cfg, encode=encode, train=train, sample=sample, evaluate=evaluate)


def run_quickstart(cfg: QuickstartConfig) -> dict:
    """Run every stage; returns the metrics written to ``<run_dir>/metrics.json``."""
    import torch

    from lamamba.ray_runtime import ray_session

    torch.set_num_threads(cfg.threads)
    paths = Paths(Path(cfg.run_dir).resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    cfg = _connect(cfg, paths)
    save_config(cfg, paths.root / "quickstart_config.yaml")
    clock = StageClock(STAGES)
    print(f"lamamba quickstart: the whole pipeline on scikit-learn's handwritten digits, CPU only.\n"
          f"Outputs: {paths.root}", flush=True)
    # One local Ray for the encode and sample stages (each job uses a running Ray as it is).
    with ray_session(num_cpus=cfg.ray_cpus):
        with clock.stage("classifier", "train the digit classifier that stands in for Inception"):
            classifier = _train_classifier(cfg, paths, clock)
        with clock.stage("encode", "Ray job: digits -> pixel-space latent shards (identity autoencoder)"):
            _encode(cfg, clock)
        with clock.stage("train", f"lamamba train under torchrun: {cfg.launch.nproc} rank(s), DeepSpeed "
                                  f"ZeRO-{cfg.train.engine.zero_stage} on the CPU, {cfg.train.max_steps} steps"):
            _train(cfg, paths, clock)
        with clock.stage("sample", f"{cfg.sample.num_samples} class-balanced samples from the EMA weights "
                                   f"({cfg.sample.sampler} {cfg.sample.steps} steps, CFG scale {cfg.sample.cfg_scale})"):
            _sample(cfg, clock)
    with clock.stage("evaluate", "FID and precision/recall on the classifier's features; sample accuracy"):
        metrics, samples = _evaluate(cfg, classifier, clock)
    with clock.stage("report", "sample grid, metrics JSON, TensorBoard"):
        _report(cfg, paths, metrics, samples, clock)
    _print_summary(cfg, paths, metrics, clock)
    return metrics


def _train_classifier(cfg: QuickstartConfig, paths: Paths, clock: StageClock) -> ClassifierReport:
    """Train on the split the diffusion model trains on, check on the held-out split, and keep the
    real training images as the evaluation reference."""
    from lamamba.evaluation.digit_classifier import save_digit_classifier, train_digit_classifier
    from lamamba.evaluation.shards import write_npz

    train_images, train_labels = real_digits(cfg.encode.source.split)
    test_images, test_labels = real_digits("test")
    c = cfg.classifier
    model, report = train_digit_classifier(train_images, train_labels, test_images, test_labels,
                                           seed=cfg.train.seed, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr)
    clock.note(f"held-out accuracy {report.held_out_accuracy:.1%} on {report.held_out_size} real digits "
               f"(trained on {report.train_size})")
    if report.held_out_accuracy < c.min_held_out_accuracy:
        raise RuntimeError(f"the digit classifier reaches only {report.held_out_accuracy:.1%} on held-out digits "
                           f"(< classifier.min_held_out_accuracy = {c.min_held_out_accuracy:.0%}); its metrics "
                           "would not mean much: raise classifier.epochs")
    save_digit_classifier(str(paths.classifier), model, report)
    write_npz(str(paths.real_images), arr_0=train_images, labels=train_labels)
    return report


def _encode(cfg: QuickstartConfig, clock: StageClock) -> None:
    from data_pipeline import run_encode

    summary = run_encode(cfg.encode)
    for line in summary.lines():
        clock.note(line)


def _train(cfg: QuickstartConfig, paths: Paths, clock: StageClock) -> None:
    """``torchrun --standalone --nproc_per_node N -m launcher.cli train CONFIG``: the same process
    layout as a real run, so DeepSpeed and torch.distributed start and stop as they do there."""
    paths.train.mkdir(parents=True, exist_ok=True)
    config_path = paths.train / "quickstart_train.yaml"
    save_config(cfg.train, config_path)
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads))
    # The launcher package must import in the ranks even when lamamba is run from a checkout.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={cfg.launch.nproc}", "-m", "launcher.cli", "train", str(config_path)]
    clock.note(" ".join(command[2:]))
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"training failed (exit {result.returncode}); its log is under {paths.train}. "
                           "Rerunning the quickstart resumes from the last checkpoint.")


def _sample(cfg: QuickstartConfig, clock: StageClock) -> None:
    from lamamba.evaluation.sampler import run_sampling

    if not Path(cfg.sample.checkpoint, CHECKPOINT_MARKER).exists():
        raise RuntimeError(f"no committed checkpoint at {cfg.sample.checkpoint}: training stopped before "
                           f"train.max_steps ({cfg.train.max_steps}); rerun the quickstart to continue it")
    done = run_sampling(cfg.sample)
    clock.note(f"{len(done)} shard(s) sampled into {cfg.sample.out} ({cfg.sample.launcher} launcher)")


def _evaluate(cfg: QuickstartConfig, classifier: ClassifierReport, clock: StageClock) -> tuple[dict, Samples]:
    """The evaluator's metrics plus what only a classifier can tell: is a sample its class?"""
    from lamamba.evaluation.evaluator import evaluate
    from lamamba.evaluation.features import build_extractor

    extractor = build_extractor(cfg.evaluate.extractor)
    result = evaluate(cfg.evaluate, extractor)
    images, labels = read_samples(cfg.sample.out)
    predicted = extractor.predict(images)
    per_class = {str(c): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)}
    metrics = {
        "sample_accuracy": float(np.mean(predicted == labels)),
        "sample_accuracy_per_class": per_class,
        "classifier_held_out_accuracy": classifier.held_out_accuracy,
        **result["metrics"],
        "num_samples": int(len(labels)),
        "cfg_scale": cfg.sample.cfg_scale,
        "sampler": f"{cfg.sample.sampler}{cfg.sample.steps}",
        "train_steps": cfg.train.max_steps,
        "evaluator_output": result["written_to"],
    }
    clock.note(f"sample accuracy {metrics['sample_accuracy']:.1%} (chance 10%), FID {metrics['fid']:.2f}, "
               f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}")
    return metrics, Samples(images, labels, predicted)


def read_samples(samples: str) -> tuple[np.ndarray, np.ndarray]:
    """Every finished shard of a sample set: images (N, H, W, C) uint8 and their labels (N,)."""
    from lamamba.evaluation.shards import done_shards, images_name, read_npz

    shards = [read_npz(str(Path(samples, images_name(s)))) for s in done_shards(samples)]
    return np.concatenate([s["arr_0"] for s in shards]), np.concatenate([s["labels"] for s in shards])


def _report(cfg: QuickstartConfig, paths: Paths, metrics: dict, samples: Samples, clock: StageClock) -> None:
    from launcher.quickstart.report import sample_grid, write_metrics, write_tensorboard

    grid = sample_grid(samples.images, samples.labels, samples.predicted, int(samples.labels.max()) + 1,
                       cfg.grid_per_class)
    grid.save(paths.grid)
    metrics["total_seconds"] = round(clock.total, 1)
    metrics["stage_seconds"] = {k: round(v, 1) for k, v in clock.seconds.items()}
    write_metrics(paths.metrics, metrics)
    write_tensorboard(paths.tensorboard, metrics, grid, cfg.train.max_steps)


def _print_summary(cfg: QuickstartConfig, paths: Paths, metrics: dict, clock: StageClock) -> None:
    rel = os.path.relpath(paths.root)
    root = paths.root if rel.startswith("..") else Path(rel)

    def where(name: str) -> str:
        return f"{str(root / name):<36}"

    print(f"""
lamamba quickstart finished in {format_seconds(clock.total)}.
  sample accuracy   {metrics['sample_accuracy']:.1%} of the class-conditional samples read as their class (chance 10%)
  FID               {metrics['fid']:.2f} (digit-classifier features, against the real {cfg.encode.source.split} digits)
  precision/recall  {metrics['precision']:.3f} / {metrics['recall']:.3f}
  classifier        {metrics['classifier_held_out_accuracy']:.1%} accurate on held-out real digits

Where things are:
  {where(paths.grid.name)} the samples, one row per class (green frame: read as its class)
  {where(paths.metrics.name)} every metric and the time of each stage
  {where('train')} training log, metrics.jsonl, checkpoints with the EMA weights
  {where('samples')} the sample shards (ADM .npz format)

Next:
  tensorboard --logdir {root}
      training losses, throughput, EMA sample grids, and the final metrics and samples
  lamamba sample --help, lamamba evaluate --help
      the same jobs at ImageNet scale (Inception features, 50K samples)
  README.md, section "ImageNet on a cluster"
      encode, train, sample and evaluate at 256/512/1024 px on SLURM or Ray
""", flush=True)
