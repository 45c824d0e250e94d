"""End-to-end training on 2 CPU ranks (torchrun + real DeepSpeed on gloo), tiny preset, bf16,
activation checkpointing on: ZeRO stages, exact resume after kill -9 and after SIGTERM, resume on
1 rank, partial checkpoints, TensorBoard contents and export.

The runs are shared between assertions (the ZeRO-2 and ZeRO-3 reference runs of 4 steps in
conftest.py) to keep DeepSpeed start-ups few.
"""

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from training_helpers import (committed, launch, losses, metrics, output, rank_pids, run, wait,
                              wait_for)

STEPS = 4  # configs/train/tiny_digits.yaml: max_steps 4, a checkpoint every 2 steps


def final_state(run_dir, step=STEPS):
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    return {name: load_file(ckpt / name) for name in ("consolidated.safetensors", "ema.safetensors",
                                                       "ema_0.99.safetensors")}


def assert_same_state(a, b):
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}:{key} differs"


def check_trained(run_dir, steps):
    loss = losses(run_dir)
    assert sorted(loss) == list(range(1, steps + 1))
    assert all(torch.isfinite(torch.tensor(v)) for v in loss.values())
    assert loss[steps] < 0.5 * loss[1], loss  # a clear decrease on the fixed digits set
    assert committed(run_dir)[-1] == steps


def test_zero1_trains(tmp_path, digits_manifest):
    run_dir = tmp_path / "run"
    run(run_dir, digits_manifest, 2, "engine.zero_stage=1")
    check_trained(run_dir, STEPS)


def test_zero2_trains_and_logs_to_tensorboard(reference_z2):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lamamba.training.monitors import TB_TAGS

    check_trained(reference_z2, STEPS)
    events = EventAccumulator(str(reference_z2 / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(TB_TAGS.values()) <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    images = events.Images("samples/ema")
    assert [im.step for im in images] == [3]  # monitor.sample_every = 3
    assert images[0].width > 0 and images[0].height > 0
    log = (reference_z2 / "train.log").read_text()
    assert "img/s" in log
    assert "MFU peak per device: monitor.peak_tflops=0.1 (set in the config)" in log


def test_zero3_trains(reference_z3):
    check_trained(reference_z3, STEPS)


def test_kill9_then_relaunch_repeats_the_straight_run(tmp_path, digits_manifest, reference_z2):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, digits_manifest, 2, "engine.zero_stage=2")
    wait_for(lambda: 2 in committed(run_dir), proc, run_dir, what="checkpoint 2")
    pids = rank_pids(proc)
    os.kill(pids[1], signal.SIGKILL)
    assert wait(proc, run_dir) != 0
    assert max(committed(run_dir)) < STEPS
    run(run_dir, digits_manifest, 2, "engine.zero_stage=2")  # the same command
    assert "resumed from" in output(run_dir)
    reference = losses(reference_z2)
    for record in metrics(run_dir):  # before the kill and after the restart
        assert record["loss"] == reference[record["step"]], record["step"]
    steps = [r["step"] for r in metrics(run_dir)]
    assert max(steps) == STEPS and len(steps) == len(set(steps)), steps  # each step logged once
    assert_same_state(final_state(run_dir), final_state(reference_z2))


def test_resume_on_one_rank_skips_partial_checkpoint(tmp_path, digits_manifest):
    # fp32, so that the 1-rank continuation can be held to a tight tolerance (in bf16 the CPU
    # kernels round differently in a 1- and a 2-rank process from the first step on).
    reference = tmp_path / "reference"
    run(reference, digits_manifest, 2, "engine.zero_stage=3", "engine.precision=fp32", "monitor.sample_every=0")
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    partial = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    (partial / "COMMITTED").unlink()
    run(run_dir, digits_manifest, 1, "engine.zero_stage=3", "engine.precision=fp32", "monitor.sample_every=0")
    log = output(run_dir)
    assert f"ignoring partial checkpoint {partial}" in log
    assert "step 2, 32 samples consumed (checkpoint written by 2 ranks, now 1)" in log
    expected, resumed = losses(reference), losses(run_dir)
    assert sorted(resumed) == [3, 4]
    for step, loss in resumed.items():  # same data, noise and weights; sums in another order
        assert loss == pytest.approx(expected[step], rel=1e-5)
    state = json.loads((partial / "trainer_state.json").read_text())
    assert state["samples_consumed"] == STEPS * 16 and state["world_size"] == 1
    ema, ema_ref = final_state(run_dir)["ema.safetensors"], final_state(reference)["ema.safetensors"]
    assert all(torch.allclose(ema[k], ema_ref[k], rtol=1e-4, atol=1e-6) for k in ema)


def test_sigterm_checkpoints_exits_0_and_relaunch_continues(tmp_path, digits_manifest, reference_z3):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, digits_manifest, 2, "engine.zero_stage=3")
    wait_for(lambda: len(metrics(run_dir)) >= 1, proc, run_dir, what="the first step")
    os.kill(rank_pids(proc)[1], signal.SIGTERM)
    assert wait(proc, run_dir) == 0, output(run_dir)[-3000:]
    stopped = max(committed(run_dir))
    assert stopped < STEPS and f"preempted (another rank's request) at step {stopped}" in output(run_dir)
    run(run_dir, digits_manifest, 2, "engine.zero_stage=3")
    assert losses(run_dir) == losses(reference_z3)
    assert_same_state(final_state(run_dir), final_state(reference_z3))


def test_export_writes_the_ema_alone(tmp_path, reference_z2):
    from launcher.cli import main
    from lamamba.models.io import load_model

    out = tmp_path / "model.safetensors"
    assert main(["export", str(reference_z2), "--out", str(out)]) == 0
    model, cfg, meta = load_model(str(out))
    ema = final_state(reference_z2)["ema.safetensors"]
    assert cfg.preset == "tiny" and meta["step"] == str(STEPS) and meta["ema_decay"] == "0.9999"
    assert "train_config" in meta
    assert all(torch.equal(p, ema[n]) for n, p in model.named_parameters())
