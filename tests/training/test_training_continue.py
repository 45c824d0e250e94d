"""Resuming a run directory: keys that do not change the run continue it, keys that do are refused
before any state is loaded (was: a warning, then a run mixing two configs); a checkpoint of an
older posterior-draw version resumes with a warning."""

import json

import pytest
from training_helpers import launch, output, run, wait

from lamamba import storage
from lamamba.training.checkpointer import MARKER


@pytest.mark.slow
def test_resume_refuses_other_identity_and_continues_with_other_cadence(tmp_path, digits_manifest):
    run_dir = tmp_path / "run"
    common = ("monitor.sample_every=0", "engine.activation_checkpointing=none")
    run(run_dir, digits_manifest, 1, "max_steps=2", *common)

    rc = wait(launch(run_dir, digits_manifest, 1, "max_steps=3", "seed=1", "optim.lr=0.01", *common), run_dir)
    log = output(run_dir)
    assert rc == 2, log[-3000:]
    refusal = [line for line in log.splitlines() if line.startswith("lamamba train: config error")]
    assert len(refusal) == 1 and "optim.lr, seed" in refusal[0] and "Traceback" not in log

    # A checkpoint written before the counter-based posterior draw (no data_draws in its trainer
    # state; its commit marker re-signed as that code wrote it) resumes with a warning.
    ckpt = run_dir / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["data_draws"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    marker = json.loads((ckpt / MARKER).read_text())
    marker["files"]["trainer_state.json"] = {"size": (ckpt / "trainer_state.json").stat().st_size,
                                             "sha256": storage.sha256(str(ckpt / "trainer_state.json"))}
    (ckpt / MARKER).write_text(json.dumps(marker))

    run(run_dir, digits_manifest, 1, "max_steps=3", "monitor.log_every=2", "checkpoint.keep_last=3", *common)
    log = output(run_dir)
    assert "continuing the run with changed checkpoint.keep_last, max_steps, monitor.log_every" in log
    assert "resumed from" in log and "finished: 3 steps" in log
    assert "keyed draws of version 1, this code makes version 2" in log
