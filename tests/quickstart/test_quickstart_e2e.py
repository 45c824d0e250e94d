"""A shortened `lamamba quickstart` end to end: real Ray encode, DeepSpeed training on 2 gloo ranks
under torchrun, Ray sampling, the evaluator with the digit classifier; then the artefacts a person
looks at, and a rerun that reuses them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launcher.quickstart.report import sample_grid

ROOT = Path(__file__).resolve().parents[2]
# A few steps of everything: the point is that every stage runs and hands over to the next.
SHORT = ["launch.nproc=2", "train.max_steps=4", "train.monitor.log_every=2", "train.monitor.sample_every=4",
         "train.monitor.sample_steps=2", "sample.num_samples=20", "sample.steps=3", "sample.batch_size=10",
         "sample.shard_size=10", "classifier.epochs=3", "classifier.min_held_out_accuracy=0.5", "grid_per_class=2"]


def _quickstart(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "launcher.cli", "quickstart", "--out", str(out), *SHORT],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _scalars_and_images(logdir: Path) -> tuple[dict, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["images"]


@pytest.mark.slow
def test_short_quickstart_writes_everything_a_user_looks_at(tmp_path):
    out = tmp_path / "qs"
    run = _quickstart(out)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for k, stage in enumerate(["classifier", "encode", "train", "sample", "evaluate", "report"], 1):
        assert f"[{k}/6] {stage} done in" in run.stdout
    assert "lamamba quickstart finished in" in run.stdout
    assert f"tensorboard --logdir {out}" in run.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("sample_accuracy", "fid", "precision", "recall", "classifier_held_out_accuracy",
                "sample_accuracy_per_class", "total_seconds", "stage_seconds"):
        assert key in metrics, key
    assert 0.0 <= metrics["sample_accuracy"] <= 1.0 and np.isfinite(metrics["fid"]) and metrics["fid"] >= 0
    assert metrics["classifier_held_out_accuracy"] >= 0.5
    assert metrics["num_samples"] == 20 and metrics["train_steps"] == 4
    assert set(metrics["stage_seconds"]) == {"classifier", "encode", "train", "sample", "evaluate"}

    # The samples: two ADM-format shards, labels i mod 10, and a grid of one row per class.
    shard = np.load(out / "samples" / "shard_00000.npz")
    assert shard["arr_0"].shape == (10, 8, 8, 1) and shard["arr_0"].dtype == np.uint8
    assert list(shard["labels"]) == list(range(10))
    expected = sample_grid(np.zeros((20, 8, 8, 1), np.uint8), np.arange(20) % 10, np.arange(20) % 10, 10, 2)
    assert Image.open(out / "samples.png").size == expected.size

    # Training: a committed checkpoint with the EMA the sampler read, and the trainer's TensorBoard.
    assert (out / "train" / "checkpoints" / "step_00000004" / "COMMITTED").exists()
    train_scalars, train_images = _scalars_and_images(out / "train" / "tb")
    assert any("loss" in tag for tag in train_scalars) and train_images
    scalars, images = _scalars_and_images(out / "tb")
    assert scalars["quickstart/sample_accuracy"] == [pytest.approx(metrics["sample_accuracy"])]
    assert "quickstart/samples" in images

    # A rerun in the same directory reuses every stage's output instead of redoing it.
    again = _quickstart(out)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "shards written: 0, already done: 3" in again.stdout
    assert "0 shard(s) sampled" in again.stdout
    assert json.loads((out / "metrics.json").read_text())["sample_accuracy"] == metrics["sample_accuracy"]
