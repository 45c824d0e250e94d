"""The entrypoint's restart loop and stop handling, with stand-in job processes."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from launcher import runs
from launcher.entrypoint import Supervisor
from launcher.torchrun import torchrun_prefix

# Fails until it has run `n` times (counted in a file): a job that crashes, then resumes fine.
FLAKY = "import sys, pathlib; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) + 1; " \
        "p.write_text(str(n)); sys.exit(0 if n >= int(sys.argv[2]) else 7)"


def test_restarts_until_success(tmp_path, capfd):
    counter = tmp_path / "count"
    counter.write_text("")
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)]
    state, rc, attempts = Supervisor(max_restarts=2).run([sys.executable, "-c", FLAKY, str(counter), "3"])
    assert (state, rc, attempts) == (runs.SUCCEEDED, 0, 3)
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)] == before
    assert "attempt 2 failed with exit code 7; restart 2/2" in capfd.readouterr().out


def test_gives_up_after_max_restarts(tmp_path):
    counter = tmp_path / "count"
    counter.write_text("")
    state, rc, attempts = Supervisor(max_restarts=1).run([sys.executable, "-c", FLAKY, str(counter), "5"])
    assert (state, rc, attempts) == (runs.FAILED, 7, 2)
    assert counter.read_text() == "2"


@pytest.mark.parametrize("on_sigterm, rc", [
    ("lambda *a: sys.exit(0)", 0),  # checkpoints and exits 0, as training does
    ("signal.SIG_IGN", -signal.SIGKILL),  # stuck (e.g. connecting to a Ray head that is gone): killed
])
def test_sigterm_stops_without_restart(tmp_path, on_sigterm, rc):
    """A cancel is STOPPED, even when the job exits 0 on SIGTERM, and never leaves the job running."""
    ready = tmp_path / "ready"
    job = (f"import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, {on_sigterm}); "
           f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    supervisor = Supervisor(max_restarts=3, stop_grace_s=1.0)

    def cancel_when_ready():
        while not ready.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # what `lamamba cancel` / Ray's stop_job send

    threading.Thread(target=cancel_when_ready, daemon=True).start()
    old = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)]
    try:
        assert supervisor.run([sys.executable, "-c", job]) == (runs.STOPPED, rc, 1)
    finally:
        for signum, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGUSR1), old):
            signal.signal(signum, handler)


def test_sigusr1_reaches_the_ranks_and_spares_the_launcher(tmp_path):
    """A preemption notice goes to every process of the job: the rank (here in its own session, as
    torchrun starts them) checkpoints and exits 0; the launcher in between survives it (it ignores
    SIGUSR1); the attempt is STOPPED, not SUCCEEDED, and not restarted."""
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    rank = (f"import pathlib, signal, sys, time; "
            f"signal.signal(signal.SIGUSR1, lambda *a: (pathlib.Path({str(saved)!r}).touch(), sys.exit(0))); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    launcher = (f"import subprocess, sys; "
                f"sys.exit(subprocess.Popen([sys.executable, '-c', {rank!r}], start_new_session=True).wait())")

    def preempt_when_ready():
        while not ready.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)  # what srun forwards from the batch script's trap

    threading.Thread(target=preempt_when_ready, daemon=True).start()
    old = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)]
    try:
        assert Supervisor(max_restarts=3, stop_grace_s=1.0).run([sys.executable, "-c", launcher]) == \
            (runs.STOPPED, 0, 1)
    finally:
        for signum, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGUSR1), old):
            signal.signal(signum, handler)
    assert saved.exists()


def test_torchrun_prefix_single_node_is_standalone():
    assert torchrun_prefix("py", 1, 2) == ["py", "-m", "torch.distributed.run", "--nproc-per-node=2",
                                           "--standalone", "--nnodes=1"]


def test_entrypoint_records_the_outcome(tmp_path):
    """A whole entrypoint run of a job that fails on its config: FAILED recorded, no FINISHED marker."""
    run_dir = tmp_path / "run"
    (run_dir / "launch").mkdir(parents=True)
    (run_dir / "launch" / "config.yaml").write_text("no_such_key: 1\n")
    (run_dir / "launch" / "FINISHED").touch()  # left by an earlier attempt: cleared at start
    proc = subprocess.run([sys.executable, "-m", "launcher.entrypoint", "evaluate", f"--run-dir={run_dir}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert runs.read_outcome(str(run_dir))["state"] == runs.FAILED
    assert not (run_dir / "launch" / "FINISHED").exists()
    assert "config error" in proc.stderr and "no_such_key" in proc.stderr
