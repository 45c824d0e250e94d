"""SLURM environment parsing: node lists, ranks, rendezvous host and port; the entrypoint's torchrun."""

import argparse

import pytest

from launcher import entrypoint
from launcher.slurm_env import SlurmEnvError, expand_nodelist, port_for_job, rendezvous_from_env


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
    ("node7", ["node7"]),
    ("a[8-11]", ["a8", "a9", "a10", "a11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("r[1-2]n[1-2],login", ["r1n1", "r1n2", "r2n1", "r2n2", "login"]),
    ("x-[1,3],y.z", ["x-1", "x-3", "y.z"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-03", "gpu]1[", "gpu[a-b]", "gpu[5-3]", ""])
def test_expand_nodelist_rejects_malformed(bad):
    with pytest.raises(SlurmEnvError):
        expand_nodelist(bad)


def _env(**extra):
    env = {"SLURM_JOB_NODELIST": "gpu[01-03,07]", "SLURM_JOB_ID": "4242", "SLURM_NNODES": "4"}
    env.update(extra)
    return env


def test_rendezvous_every_node_agrees():
    seen = [rendezvous_from_env(_env(SLURM_NODEID=str(r), SLURM_PROCID=str(r))) for r in range(4)]
    assert [s.node_rank for s in seen] == [0, 1, 2, 3]
    assert {(s.master_addr, s.master_port, s.nnodes) for s in seen} == {("gpu01", port_for_job(4242), 4)}
    assert seen[0].hosts == ("gpu01", "gpu02", "gpu03", "gpu07")


def test_rendezvous_port_is_a_function_of_the_job_and_step_ids():
    ports = {port_for_job(j, step) for j in range(100000, 100500) for step in range(8)}
    assert len(ports) == 4000 and all(15000 <= p < 30000 for p in ports)  # below the ephemeral range
    assert rendezvous_from_env(_env(SLURM_PROCID="2")).master_port == port_for_job(4242)  # PROCID fallback
    # the batch script's restart of the training step: another port and another rendezvous id
    again = rendezvous_from_env(_env(SLURM_NODEID="0", SLURM_STEP_ID="2", SLURM_RESTART_COUNT="1"))
    assert again.master_port == port_for_job(4242, 2) != port_for_job(4242, 1)
    assert again.rdzv_id == "slurm-4242-1-2"


@pytest.mark.parametrize("change, message", [
    ({"SLURM_NNODES": "3", "SLURM_NODEID": "0"}, "has 4 hosts"),
    ({"SLURM_NODEID": "4"}, "outside"),
    ({"SLURM_JOB_ID": "abc", "SLURM_NODEID": "0"}, "not an integer"),
    ({"SLURM_JOB_NODELIST": "", "SLURM_NODEID": "0"}, "SLURM_JOB_NODELIST is not set"),
])
def test_rendezvous_errors_name_the_variable(change, message):
    with pytest.raises(SlurmEnvError, match=message):
        rendezvous_from_env(_env(**change))


def test_entrypoint_starts_torchrun_with_the_slurm_rendezvous(monkeypatch, tmp_path):
    for key, value in _env(SLURM_NODEID="2", SLURM_PROCID="2", SLURM_STEP_ID="1").items():
        monkeypatch.setenv(key, value)
    args = argparse.Namespace(job="train", run_dir=str(tmp_path), rendezvous="slurm", nnodes=4, nproc_per_node=8,
                              python="python", max_restarts=2, cpu=False)
    cmd, node_rank, entrypoint_restarts = entrypoint.job_process_command(args, "cfg.yaml")
    assert node_rank == 2
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    for flag in ("--nproc-per-node=8", "--nnodes=4", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint=gpu01:{port_for_job(4242, 1)}", "--rdzv-id=slurm-4242-0-1",
                 "--rdzv-conf=is_host=false",
                 f"--log-dir={tmp_path}/logs/ranks/node2"):
        assert flag in cmd
    # Several nodes restart as one job step (the batch script's loop): neither torchrun nor the
    # entrypoint restarts on its own.
    assert not any(flag.startswith("--max-restarts") for flag in cmd) and entrypoint_restarts == 0
    assert cmd[-5:] == ["-m", "launcher.cli", "train", "cfg.yaml", f"run_dir={tmp_path}"]
