"""The SLURM backend against fake sbatch/squeue/sacct/scancel/srun/scontrol that record their arguments."""

import os
import signal
import subprocess
import time

import pytest

from launcher import runs
from launcher.backends.slurm import slurm_state
from launcher.cli import main

# srun stands for the job step: it records itself and runs until the test stops it or USR1 comes
# (passed on by the batch script; training checkpoints and exits 0 on it). The `lamamba doctor`
# step before it passes at once.
FAKE_SRUN = """#!/bin/sh
echo "srun $*" >> "$FAKE_DIR/calls.log"
case "$*" in *" doctor "*) exit 0;; esac
trap 'echo "srun got USR1" >> "$FAKE_DIR/calls.log"; exit 0' USR1
echo $$ > "$FAKE_DIR/srun.pid"
while [ ! -e "$FAKE_DIR/stop" ]; do sleep 0.05; done
exit 0
"""

# scontrol requeue ends the running step, as SLURM does.
FAKE_SCONTROL = """#!/bin/sh
echo "scontrol $*" >> "$FAKE_DIR/calls.log"
touch "$FAKE_DIR/stop"
"""


@pytest.fixture
def fake_slurm(fake_tools):
    install, fake_dir, calls = fake_tools
    install({"sbatch": None, "squeue": None, "sacct": None, "scancel": None,
             "srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL})
    (fake_dir / "sbatch.out").write_text("4242;cluster1\n")
    return fake_dir, calls


@pytest.fixture
def encode_config(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text("source: {kind: digits}\nautoencoder: {kind: identity, image_channels: 1}\nresolution: 8\n")
    return str(path)


def test_submit_status_logs_cancel(fake_slurm, encode_config, tmp_path, capsys):
    fake_dir, calls = fake_slurm
    root = str(tmp_path / "runs")
    assert main(["submit", "encode", encode_config, "shard_size=512", "--backend", "slurm", "--runs-root", root,
                 "--partition", "cpu", "--gpus-per-node", "0"]) == 0
    run_id = capsys.readouterr().out.split()[1]
    record = runs.find_run(run_id, root)
    assert record.handle == {"job_id": "4242"} and record.backend == "slurm"
    script = os.path.join(record.run_dir, "launch", "job.sbatch")
    assert calls() == [f"sbatch --parsable {script}"]
    assert "#SBATCH --partition=cpu" in open(script).read()
    saved = open(os.path.join(record.run_dir, "launch", "config.yaml")).read()
    assert "shard_size: 512" in saved and f"run_dir: {record.run_dir}" in saved

    (fake_dir / "squeue.out").write_text("RUNNING\n")
    assert main(["status", run_id, "--runs-root", root]) == 0
    assert " RUNNING " in capsys.readouterr().out
    assert calls()[-1] == "squeue --noheader --states=all --jobs 4242 --format=%T"

    # Submitting the same command while it runs is refused (exit 1, one line).
    assert main(["submit", "encode", encode_config, "shard_size=512", "--backend", "slurm", "--runs-root", root]) == 1
    assert "already running" in capsys.readouterr().err

    assert main(["cancel", run_id, "--runs-root", root]) == 0
    assert calls()[-1] == "scancel 4242"

    # Off the queue: the accounting database answers.
    (fake_dir / "squeue.out").write_text("")
    (fake_dir / "sacct.out").write_text("CANCELLED by 1000\nCANCELLED\n")
    assert main(["status", run_id, "--runs-root", root]) == 0
    assert " STOPPED " in capsys.readouterr().out
    assert calls()[-1] == "sacct --noheader --allocations --parsable2 --jobs 4242 --format=State"

    log = os.path.join(record.run_dir, "logs", "slurm-4242.out")
    with open(log, "w") as f:
        f.write("0: encoded 4 shards\n")
    assert main(["logs", run_id, "--runs-root", root]) == 0
    assert capsys.readouterr().out == "0: encoded 4 shards\n"

    # Resubmitting a finished run continues it in the same run dir.
    assert main(["submit", "encode", encode_config, "shard_size=512", "--backend", "slurm", "--runs-root", root]) == 0
    assert "submission 2" in capsys.readouterr().out
    assert runs.find_run(run_id, root).submissions == 2


@pytest.mark.parametrize("state, expected", [
    ("PENDING", runs.PENDING), ("REQUEUED", runs.PENDING), ("RUNNING", runs.RUNNING), ("COMPLETED", runs.SUCCEEDED),
    ("CANCELLED by 12", runs.STOPPED), ("FAILED", runs.FAILED), ("TIMEOUT", runs.FAILED),
    ("NODE_FAIL", runs.FAILED), ("OUT_OF_MEMORY", runs.FAILED), ("", runs.UNKNOWN),
])
def test_slurm_states(state, expected):
    assert slurm_state(state) == expected


def _run_batch_script(fake_dir, script, finished: bool):
    """Run the rendered script as SLURM would, send it USR1 (the time-limit warning), return the calls."""
    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-04]"}
    out = fake_dir / "batch.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(["bash", script], stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while not (fake_dir / "srun.pid").exists():  # the trap is installed before srun starts
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    if finished:
        while "USR1" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.02)
        (fake_dir / "stop").touch()  # the step ends by itself
    assert proc.wait(timeout=20) == 0
    return out.read_text()


@pytest.mark.parametrize("finished", [False, True])
def test_batch_script_requeues_unless_finished(fake_slurm, tmp_path, finished):
    fake_dir, calls = fake_slurm
    run_dir = tmp_path / "runs" / "train-t-1"
    from launcher.backends import Submission
    from launcher.backends.slurm import SlurmBackend

    script = tmp_path / "job.sbatch"
    script.write_text(SlurmBackend().render(Submission(job="train", run_id="train-t-1", run_dir=str(run_dir),
                                                       nodes=4, gpus_per_node=2, options={"workdir": str(tmp_path)})))
    if finished:
        (run_dir / "launch").mkdir(parents=True)
        (run_dir / "launch" / "FINISHED").touch()
    output = _run_batch_script(fake_dir, str(script), finished)
    doctor, *srun = [c for c in calls() if c.startswith("srun --")]
    assert "--nodes=4 --ntasks-per-node=1" in doctor and f"doctor --job=train --run-dir={run_dir}" in doctor
    assert len(srun) == 1 and "--nodes=4 --ntasks-per-node=1" in srun[0] and "--nproc-per-node=2" in srun[0]
    requeues = [c for c in calls() if c.startswith("scontrol")]
    assert requeues == ([] if finished else ["scontrol requeue 4242"]), output
    # The step got the signal, and the requeue came only after the step had ended.
    assert "srun got USR1" in calls()
    assert finished or calls().index("srun got USR1") < calls().index("scontrol requeue 4242")
