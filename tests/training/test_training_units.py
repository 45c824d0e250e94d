"""Fast checks of the training components that need no process group."""

import glob
import os
import signal

import pytest
import torch

from lamamba.config import ConfigError, load_config
from lamamba.training.checkpointer import MARKER, resolve_checkpoint, scan_checkpoints
from lamamba.training.config import TrainConfig
from lamamba.training.engine import deepspeed_config, plan_batches
from lamamba.training.monitors import IntervalMeter, StepStats, format_line
from lamamba.training.numerics import NonFiniteError, NumericsGuard
from lamamba.training.preemption import PreemptionWatcher
from lamamba.training.sample_grid import image_grid
from lamamba.config import redacted


def test_batch_plan_follows_global_batch_and_world_size():
    plan = plan_batches(256, 8, 4)
    assert (plan.per_rank, plan.micro_batch, plan.accumulation) == (32, 4, 8)
    plan = plan_batches(256, 128, 4)  # fewer samples per rank than the micro-batch cap
    assert (plan.per_rank, plan.micro_batch, plan.accumulation) == (2, 2, 1)
    assert plan_batches(16, 2, 0).accumulation == 1
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        plan_batches(256, 3)
    with pytest.raises(ConfigError, match="engine.micro_batch=4 does not divide the per-rank batch 6"):
        plan_batches(12, 2, 4)


def test_deepspeed_config_takes_batch_precision_and_clipping_from_the_run():
    cfg = load_config(TrainConfig, "configs/train/xl_1024.yaml", ["engine.zero_stage=3", "optim.grad_clip=1.0"])
    ds = deepspeed_config(cfg, plan_batches(cfg.global_batch, 16, cfg.engine.micro_batch))
    assert ds["train_batch_size"] == 256 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 1.0
    assert ds["zero_optimization"]["stage"] == 3 and "optimizer" not in ds
    # the default bf16-autocast: fp32 module parameters, DeepSpeed's torch.autocast in forward
    assert ds["bf16"]["enabled"] is False and ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    cfg = load_config(TrainConfig, "configs/train/xl_1024.yaml", ["engine.precision=bf16"])
    ds = deepspeed_config(cfg, plan_batches(cfg.global_batch, 16, cfg.engine.micro_batch))
    assert ds["bf16"]["enabled"] is True and "torch_autocast" not in ds
    cfg = load_config(TrainConfig, None, ["engine.ds_config=missing.json"])
    with pytest.raises(ConfigError, match="missing.json"):
        deepspeed_config(cfg, plan_batches(256, 8))


@pytest.mark.parametrize("path", sorted(glob.glob("configs/train/*.yaml")))
def test_every_train_config_loads(path):
    cfg = load_config(TrainConfig, path)
    if "tiny" not in path:
        assert cfg.global_batch == 256 and cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.0
        assert cfg.ema.decays[0] == 0.9999
        assert cfg.model.input_size * 8 == int(os.path.basename(path).rsplit("_", 1)[1][:-5])
        # the scan reads fp32 SSM parameters in every LaMamba-Diff recipe (DiT has no SSM)
        assert cfg.engine.precision == ("bf16" if os.path.basename(path).startswith("dit") else "bf16-autocast")


def test_bad_config_values_name_the_key():
    with pytest.raises(ConfigError, match="engine.zero_stage"):
        load_config(TrainConfig, None, ["engine.zero_stage=4"])
    with pytest.raises(ConfigError, match="ema.decays"):
        load_config(TrainConfig, None, ["ema.decays=[1.5]"])


def test_numerics_guard_counts_and_stops_after_k_in_a_row():
    guard = NumericsGuard(max_consecutive=2)
    assert not guard.check(1, 0.5, 1.0, True)
    assert guard.check(2, float("nan"), None, False)
    assert not guard.check(3, 0.4, 2.0, True)  # a good step resets the streak
    assert guard.check(4, 0.4, float("inf"), False)
    with pytest.raises(NonFiniteError, match="step 5: 2 consecutive steps"):
        guard.check(5, float("inf"), 1.0, True)
    assert guard.skipped_total == 3


def test_preemption_watcher_catches_signals_and_budget():
    before = signal.getsignal(signal.SIGUSR1)
    watcher = PreemptionWatcher(("SIGUSR1",))
    try:
        assert not watcher.stop_requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watcher.stop_requested() and watcher.reason() == "SIGUSR1"
    finally:
        watcher.restore()
    assert signal.getsignal(signal.SIGUSR1) is before
    assert PreemptionWatcher((), time_budget_s=1e-9).stop_requested()
    with pytest.raises(ValueError, match="SIGNOPE"):
        PreemptionWatcher(("SIGNOPE",))


def test_only_committed_checkpoints_resolve(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    for step, done in ((2, True), (4, True), (6, False)):
        (ckpts / f"step_{step:08d}").mkdir(parents=True)
        if done:
            (ckpts / f"step_{step:08d}" / MARKER).write_text("{}")
    (ckpts / "latest").write_text("step_00000006")  # DeepSpeed-style pointer: ignored
    scan = scan_checkpoints(str(ckpts))
    assert scan.complete == [2, 4] and scan.partial == [6] and scan.latest == 4
    assert resolve_checkpoint(str(tmp_path / "run")).endswith("step_00000004")
    with pytest.raises(FileNotFoundError, match="partial"):
        resolve_checkpoint(str(ckpts / "step_00000006"))
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"))


def test_interval_meter_figures():
    meter = IntervalMeter(train_flops_per_image=1e9, peak_flops=1e11, device=torch.device("cpu"))
    for step, skipped in ((1, False), (2, True)):
        meter.add(StepStats(step=step, loss=float("nan") if skipped else 1.0, mse=0.8, vb=0.2,
                            quarter_loss_sum=[1.0, 2.0, 0.0, 4.0], quarter_count=[1, 1, 0, 2], grad_norm=3.0,
                            lr=1e-4, skipped=skipped, images=16, step_time=0.5, data_time=0.1))
    figures = meter.flush(skipped_total=1)
    assert figures["step"] == 2 and figures["loss"] == 1.0 and figures["images_per_s"] == 32.0
    assert figures["mfu"] == pytest.approx(0.32) and figures["data_wait_share"] == pytest.approx(0.2)
    assert figures["loss_q3"] == 2.0 and figures["loss_q2"] != figures["loss_q2"]  # no samples: NaN
    assert "step 2 | loss 1.0000" in format_line(figures) and "skipped 1" in format_line(figures)
    assert meter.steps == []


def test_image_grid_and_redaction():
    grid = image_grid(torch.rand(5, 1, 8, 8))
    assert grid.shape == (3, 16, 24)
    cfg = redacted({"checkpoint": {"storage_options": {"key": "AKIA", "secret": "s", "endpoint_url": "u"}}})
    assert cfg["checkpoint"]["storage_options"] == {"key": "<redacted>", "secret": "<redacted>", "endpoint_url": "u"}
