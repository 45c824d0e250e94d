"""The evaluation sweep on the digits quickstart data: a tiny DiT trained by `lamamba train`
(2 committed checkpoints), swept over 2 guidance scales with the digit classifier's features.
The table, the plots' data and TensorBoard agree; a killed sweep resumes computing only the
missing shards and ends with the same numbers; the scaling sweep collects the runs' figures."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from lamamba.config import ConfigError, load_config
from lamamba.evaluation.shards import done_shards
from lamamba.experiments.config import EvalSweepConfig
from lamamba.experiments.eval_sweep import run_eval_sweep, watch
from lamamba.experiments.plots import (BUBBLE_AREA_PER_GFLOP, MAX_BUBBLE_AREA, fid_vs_gflops, fid_vs_guidance,
                                       fid_vs_step)
from lamamba.experiments.results import COLUMNS, read_table

pytestmark = pytest.mark.slow  # trains a DiT and runs five sweeps: ~40 s of CPU, minutes on a loaded machine

REPO = Path(__file__).resolve().parents[2]
SHARDS = 3  # per point: 30 samples in shards of 10


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_manifest):
    """A DiT-tiny/2 run with checkpoints at steps 2 and 4, the digit classifier, the real digits."""
    from launcher.quickstart.pipeline import real_digits
    from lamamba.evaluation.digit_classifier import save_digit_classifier, train_digit_classifier
    from lamamba.evaluation.shards import write_npz

    root = tmp_path_factory.mktemp("eval-sweep")
    train = subprocess.run([sys.executable, "-m", "launcher.cli", "train", "configs/train/dit_tiny_digits.yaml",
                            f"run_dir={root / 'dit-run'}", f"data.manifest={digits_manifest}",
                            # 4 steps: let the labels matter already (DiT's zero final layer delays it a step)
                            "model.zero_init_final=false", "optim.lr=0.01"],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    (xtr, ytr), (xte, yte) = real_digits("train"), real_digits("test")
    model, _ = train_digit_classifier(xtr[:600], ytr[:600], xte[:200], yte[:200], seed=0, epochs=2)
    classifier = root / "digits.safetensors"
    save_digit_classifier(str(classifier), model, _)
    write_npz(str(root / "real.npz"), arr_0=xtr[:300], labels=ytr[:300])
    config = {
        "train_run": str(root / "dit-run"),
        "guidance_scales": [1.0, 3.0],
        "samplers": [{"sampler": "ddim", "steps": 4}],
        "sample": {"num_samples": 10 * SHARDS, "shard_size": 10, "batch_size": 10, "seed": 3, "launcher": "local",
                   "progress": False, "autoencoder": {"kind": "identity", "image_channels": 1}},
        "evaluate": {"reference": str(root / "reference.npz"), "is_split_size": 10,
                     "build_reference": {"source": str(root / "real.npz"), "resolution": 8},
                     "extractor": {"kind": "lamamba.evaluation.digit_classifier:digit_extractor",
                                   "weights": str(classifier), "device": "cpu"}},
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "config": path}


@pytest.fixture(scope="module")
def swept(setup):
    # where the scaling sweep of test_scaling_sweep_collects_the_runs keeps this run's evaluation
    cfg = load_config(EvalSweepConfig, setup["config"], [f"run_dir={setup['root'] / 'scaling' / 'eval' / 'dit-run'}"])
    return cfg, run_eval_sweep(cfg)


def _csv(run_dir):
    with open(Path(run_dir) / "results.csv") as f:
        return list(csv.DictReader(f))


def test_two_checkpoints_by_two_scales_give_the_table(swept):
    cfg, result = swept
    assert all(shards == [0, 1, 2] for shards in result["computed"].values()) and len(result["computed"]) == 4
    rows = _csv(cfg.run_dir)
    assert tuple(rows[0]) == COLUMNS
    assert [(r["step"], r["guidance_scale"], r["sampler"]) for r in rows] == [
        ("2", "1.0", "ddim4"), ("2", "3.0", "ddim4"), ("4", "1.0", "ddim4"), ("4", "3.0", "ddim4")]
    for r in rows:
        assert r["label"] == "dit-run" and r["n"] == "30" and float(r["fid"]) > 0
        assert 0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1 and float(r["inception_score"]) >= 1
        assert float(r["sfid"]) > 0 and float(r["wall_s"]) > 0
        assert int(r["params"]) > 0 and float(r["gflops"]) > 0 and r["checkpoint"].endswith(f"step_{int(r['step']):08d}")
    assert len({r["fid"] for r in rows}) == 4  # four different sample sets
    assert read_table(str(Path(cfg.run_dir) / "results.json")) == read_table(str(Path(cfg.run_dir) / "results.csv"))
    meta = json.loads((Path(cfg.run_dir) / "points/dit-run/step00000004_cfg3_ddim4/samples/metadata.json").read_text())
    assert meta["protocol"]["model"]["preset"] == "DiT-tiny/2" and meta["protocol"]["cfg_scale"] == 3.0


def test_plots_show_the_tables_numbers(swept):
    cfg, result = swept
    rows = read_table(str(Path(cfg.run_dir) / "results.csv"))
    plots = Path(cfg.run_dir) / "plots"
    for name in ("fid_vs_step", "fid_vs_guidance", "fid_vs_gflops"):
        png = (plots / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    fid = {(r.step, r.guidance_scale): r.fid for r in rows}
    by_step = {tuple(d["series"]): d["points"] for d in json.loads((plots / "fid_vs_step.json").read_text())}
    assert by_step == {("dit-run", s, "ddim4"): [[2, fid[(2, s)]], [4, fid[(4, s)]]] for s in (1.0, 3.0)}
    by_scale = {tuple(d["series"]): d["points"] for d in json.loads((plots / "fid_vs_guidance.json").read_text())}
    assert by_scale == {("dit-run", st, "ddim4"): [[1.0, fid[(st, 1.0)]], [3.0, fid[(st, 3.0)]]] for st in (2, 4)}
    bubbles = {d["series"]: d["points"] for d in json.loads((plots / "fid_vs_gflops.json").read_text())}
    newest = min((r for r in rows if r.step == 4), key=lambda r: r.fid)
    assert list(bubbles) == ["dit-run"] and bubbles["dit-run"][:2] == [newest.gflops, newest.fid]
    # the figures themselves hold those numbers
    fig, _ = fid_vs_step(rows)
    lines = {(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in fig.axes[0].lines}
    assert lines == {((2, 4), (fid[(2, s)], fid[(4, s)])) for s in (1.0, 3.0)}
    fig, _ = fid_vs_guidance(rows)
    assert {tuple(line.get_ydata()) for line in fig.axes[0].lines} == {(fid[(st, 1.0)], fid[(st, 3.0)]) for st in (2, 4)}
    fig, _ = fid_vs_gflops(rows)
    offsets = fig.axes[0].collections[0].get_offsets()
    assert np.allclose(offsets, [[newest.gflops, newest.fid]])
    area = newest.gflops * min(BUBBLE_AREA_PER_GFLOP, MAX_BUBBLE_AREA / newest.gflops)  # area proportional to GFLOPs
    assert np.allclose(fig.axes[0].collections[0].get_sizes(), [area]) and bubbles["dit-run"][2] == pytest.approx(area)


def test_the_same_numbers_go_to_tensorboard(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, result = swept
    acc = EventAccumulator(str(Path(cfg.run_dir) / "tb"))
    acc.Reload()
    for row in result["rows"]:
        events = {e.step: e.value for e in acc.Scalars(f"dit-run/fid/cfg{row.guidance_scale:g}/ddim4")}
        assert events[row.step] == pytest.approx(row.fid, rel=1e-6)
        recall = {e.step: e.value for e in acc.Scalars(f"dit-run/recall/cfg{row.guidance_scale:g}/ddim4")}
        assert recall[row.step] == pytest.approx(row.recall, rel=1e-6)


def test_a_killed_sweep_resumes_computing_only_the_missing_shards(setup, swept):
    run_dir = setup["root"] / "killed"
    first = run_dir / "points/dit-run/step00000002_cfg1_ddim4/samples"
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "evaluate-sweep", str(setup["config"]),
                             f"run_dir={run_dir}"], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (first.exists() and done_shards(str(first))) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = done_shards(str(first))
    assert finished, "the sweep was killed before it finished a shard"
    if len(finished) == SHARDS:
        # A quiet machine can finish the first point before the kill lands: take back the markers
        # of all but its first shard, and of every later point, so that the rerun has work left.
        for marker in (run_dir / "points").glob("*/*/samples/shard_*.done"):
            if marker.parent != first or int(marker.stem.split("_")[1]) != finished[0]:
                marker.unlink()
        finished = done_shards(str(first))
    stamps = {s: (first / f"shard_{s:05d}.npz").stat().st_mtime_ns for s in finished}
    assert not (run_dir / "results.csv").exists()

    cfg = load_config(EvalSweepConfig, setup["config"], [f"run_dir={run_dir}"])
    result = run_eval_sweep(cfg)
    assert result["computed"]["step00000002_cfg1_ddim4"] == sorted(set(range(SHARDS)) - set(finished))
    assert all(shards == [0, 1, 2] for name, shards in result["computed"].items() if name != "step00000002_cfg1_ddim4")
    assert {s: (first / f"shard_{s:05d}.npz").stat().st_mtime_ns for s in finished} == stamps
    straight = swept[1]["rows"]
    assert [(r.step, r.guidance_scale, r.fid, r.precision) for r in result["rows"]] == \
        [(r.step, r.guidance_scale, r.fid, r.precision) for r in straight]
    again = run_eval_sweep(cfg)  # nothing left: read back, nothing sampled or evaluated
    assert not any(again["computed"].values()) and [r.fid for r in again["rows"]] == [r.fid for r in straight]


def test_watch_stops_at_the_runs_last_step_and_steps_are_checked(setup, swept):
    cfg, _ = swept
    result = watch(cfg, max_rounds=1)  # max_steps is 4, already committed: one round, all read back
    assert not any(result["computed"].values()) and len(result["rows"]) == 4
    with pytest.raises(ConfigError, match=r"steps: \[3\] are not committed"):
        run_eval_sweep(load_config(EvalSweepConfig, setup["config"], ["steps=[3]"]))
    with pytest.raises(ConfigError, match="sample.checkpoint"):
        load_config(EvalSweepConfig, setup["config"], ["sample.checkpoint=x"])


def test_scaling_sweep_collects_the_runs(setup, swept, digits_manifest):
    from launcher.scaling import collect, evaluate_runs, load_scaling_config

    cfg = load_scaling_config(None, [
        f"run_dir={setup['root'] / 'scaling'}", f"submit.runs_root={setup['root']}", "latent_downsample=1",
        f"runs=[{{name: dit-run, config: configs/train/dit_tiny_digits.yaml, resolution: 8}}, "
        f"{{name: lamamba-tiny, config: configs/train/tiny_digits.yaml, warm_start: dit-run}}]",
        f"evaluate={json.dumps(yaml.safe_load(setup['config'].read_text()))}"])
    lines = evaluate_runs(cfg)  # dit-run's evaluation is the module's sweep: nothing left to compute
    assert lines == ["dit-run: 4 points (0 shards sampled now)", "lamamba-tiny: no committed checkpoint yet"]
    collect(cfg)
    rows = read_table(str(setup["root"] / "scaling" / "results.csv"))
    assert [r.label for r in rows] == ["dit-run"] * 4 + ["lamamba-tiny"]
    metrics = [json.loads(line) for line in (setup["root"] / "dit-run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0].images_per_s == sorted(m["images_per_s"] for m in metrics[1:])[len(metrics[1:]) // 2]
    assert rows[0].peak_memory_gib == max(m["peak_memory_gib"] for m in metrics)
    assert [r.fid for r in rows[:4]] == [r.fid for r in swept[1]["rows"]]
    tiny = rows[4]
    assert tiny.fid is None and tiny.step is None and tiny.gflops > 0 and tiny.images_per_s is None
    assert (setup["root"] / "scaling" / "plots" / "fid_vs_gflops.png").exists()


def test_torchrun_ranks_share_the_shards_and_give_the_same_numbers(setup, swept):
    run_dir = setup["root"] / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "launcher.cli", "evaluate-sweep", str(setup["config"]), f"run_dir={run_dir}", "sample.launcher=auto",
           "steps=[4]"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_table(str(run_dir / "results.json"))
    straight = {(r.step, r.guidance_scale): r.fid for r in swept[1]["rows"]}
    assert [(r.step, r.guidance_scale) for r in rows] == [(4, 1.0), (4, 3.0)]
    assert all(r.fid == straight[(r.step, r.guidance_scale)] for r in rows)  # the same images, whatever the fan-out
    # rank 0 reports every shard, each computed by one of the two ranks
    assert "step00000004_cfg1_ddim4: computed shards [0, 1, 2]" in proc.stdout
