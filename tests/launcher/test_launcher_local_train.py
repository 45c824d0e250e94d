"""`lamamba submit train --backend local`: two CPU ranks under torchrun, cancelled after a checkpoint,
then the same command again resumes from it and finishes."""

import os
import time
from pathlib import Path

from launcher import runs
from launcher.cli import main

REPO = Path(__file__).resolve().parents[2]


def _wait_for(predicate, what, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_local_train_cancel_then_resume(digits_latents, tmp_path, capsys):
    root = str(tmp_path / "runs")
    submit = ["submit", "train", str(REPO / "configs/train/tiny_digits.yaml"), f"data.manifest={digits_latents}",
              "max_steps=5", "monitor.sample_every=1000", "engine.activation_checkpointing=none",
              "--backend", "local", "--gpus-per-node", "2",
              "--runs-root", root]
    assert main(submit) == 0
    run_id = capsys.readouterr().out.split()[1]
    record = runs.find_run(run_id, root)
    assert record.run_dir == os.path.join(root, run_id) and record.handle["pid"] > 0

    first_checkpoint = Path(record.run_dir) / "checkpoints" / "step_00000002" / "COMMITTED"
    _wait_for(lambda: first_checkpoint.exists() or runs.read_outcome(record.run_dir), "the first checkpoint")
    assert runs.read_outcome(record.run_dir) is None, main(["logs", run_id, "--runs-root", root])
    assert main(["status", run_id, "--runs-root", root]) == 0
    assert " RUNNING " in capsys.readouterr().out
    assert main(["cancel", run_id, "--runs-root", root]) == 0
    assert main(["status", run_id, "--runs-root", root]) == 0
    assert " STOPPED " in capsys.readouterr().out

    # The same command again: same run id and dir, resumed from the newest committed checkpoint.
    assert main([*submit, "--follow"]) == 0
    out = capsys.readouterr().out
    assert f"submitted {run_id} to local (submission 2" in out
    assert "resumed from" in out and "checkpoints/step_0000000" in out and "finished: 5 steps" in out
    assert f"{run_id}: SUCCEEDED" in out
    assert (Path(record.run_dir) / "checkpoints" / "step_00000005" / "COMMITTED").exists()
    assert (Path(record.run_dir) / "launch" / "FINISHED").exists()

    # Each rank's output is kept apart as well.
    assert main(["logs", run_id, "--rank", "1", "--runs-root", root]) == 0
    assert "resumed from" not in capsys.readouterr().out  # rank 1 does not log; rank 0 does
    assert main(["logs", run_id, "--rank", "0", "--runs-root", root]) == 0
    assert "finished: 5 steps" in capsys.readouterr().out
