"""`lamamba submit --backend ray` against a real Ray head started (and stopped) by this test.

The head runs in its own temp dir and process session; teardown stops only its processes, never
other Ray instances on the machine. The jobs: a tiny encode of sklearn's digits, two CPU ranks of
training on it, and another encode that is cancelled.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.local.ray import takes_jobs
from launcher import runs
from launcher.cli import main

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a temp dir only this test uses)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="lmray", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard_port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           # The "cluster" has lamamba importable and this interpreter first on PATH, as an image would.
           "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={_free_port()}", f"--temp-dir={temp_dir}", "--num-cpus=1", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
           "--disable-usage-stats"]
    log = open(os.path.join(temp_dir, "head.log"), "wb")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, open(log.name).read()
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.5)
        while not takes_jobs(address):  # HTTP answers before the job agent can take jobs
            assert time.monotonic() < deadline, "the Ray job server takes no jobs"
            time.sleep(0.5)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head's session: ray start and what it started
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pid in [head.pid, *_pids_naming(temp_dir)]:  # what is left, or left the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def digits_config(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text("source: {kind: digits}\nautoencoder: {kind: identity, image_channels: 1}\n"
                    "resolution: 8\nshard_size: 1024\nray: {num_workers: 1}\n")
    return str(path)


def _submit(address, config, root, *overrides):
    return ["submit", "encode", config, *overrides, "--backend", "ray", "--address", address,
            "--python", sys.executable, "--runs-root", root]


def _state(run_id, root, capsys):
    assert main(["status", run_id, "--runs-root", root]) == 0
    return capsys.readouterr().out.split()[3]


def test_ray_jobs_succeed_and_another_is_cancelled(ray_head, digits_config, tmp_path, capsys):
    root = str(tmp_path / "runs")
    assert main(_submit(ray_head, digits_config, root)) == 0
    run_id = capsys.readouterr().out.split()[1]
    record = runs.find_run(run_id, root)
    assert record.handle == {"address": ray_head, "submission_id": f"{run_id}-1"}
    assert _state(run_id, root, capsys) in runs.ACTIVE_STATES + (runs.SUCCEEDED,)

    assert main(["logs", run_id, "--follow", "--runs-root", root]) == 0  # exit 0: it succeeded
    log = capsys.readouterr().out
    assert "[lamamba] encode succeeded" in log and f"{run_id}: SUCCEEDED" in log
    assert "Connecting to existing Ray cluster" in log, log  # the encode tasks ran on this cluster
    assert _state(run_id, root, capsys) == runs.SUCCEEDED
    assert (Path(record.run_dir) / "latents" / "manifest.json").exists()  # run_dir reached the job
    assert runs.read_outcome(record.run_dir)["state"] == runs.SUCCEEDED

    # Training on the encoded digits: the job places one torchrun (2 CPU ranks, --cpu: no GPUs reserved).
    train = ["submit", "train", str(REPO / "configs/train/tiny_digits.yaml"),
             f"data.manifest={record.run_dir}/latents", "max_steps=2", "monitor.sample_every=1000",
             "engine.activation_checkpointing=none", "--gpus-per-node", "2", "--cpu", "--backend", "ray",
             "--address", ray_head, "--python", sys.executable, "--runs-root", root, "--follow"]
    assert main(train) == 0
    log = capsys.readouterr().out
    assert "1 node(s) x 2 rank(s), rendezvous" in log and "finished: 2 steps" in log and ": SUCCEEDED" in log

    # A second run (other settings, asked for as a new run: another run id), stopped before it can finish.
    assert main([*_submit(ray_head, digits_config, root, "shard_size=512"), "--new-run"]) == 0
    other = capsys.readouterr().out.split()[1]
    assert other != run_id
    assert main(["cancel", other, "--runs-root", root]) == 0
    assert f"cancelled {other}" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    while (state := _state(other, root, capsys)) in runs.ACTIVE_STATES:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert state == runs.STOPPED
    assert not (Path(root) / other / "launch" / "FINISHED").exists()
    # A cancel stops the job's processes too, not only its status.
    while _pids_naming(str(Path(root) / other)):
        assert time.monotonic() < deadline + 90, "the cancelled job's processes are still running"
        time.sleep(0.5)
