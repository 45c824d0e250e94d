"""`lamamba submit --backend ray` on a Ray cluster of two namespace hosts (the head on node0, a
worker node on node1): a 2-node training run places one torchrun per node (STRICT_SPREAD), loses
its worker node mid-run (every process of that Ray node SIGKILLed, as a machine failure), starts
again on a replacement node and resumes to the uninterrupted run's exact weights; a sample job
fans its shards out over both nodes."""

import json
import re
import time

import pytest

from cluster_helpers import (REPO, STEPS, TRAIN_OVERRIDES, Cli, assert_same_weights, committed, final_weights,
                             job_env, wait_for)

pytestmark = pytest.mark.slow

# "[lamamba] node rank 1: torchrun on node1 (10.x.y.2, Ray node 3f...)", printed by the Ray task
# that starts the node's torchrun (launcher/ray_torchrun.py)
PLACED = re.compile(r"\[lamamba\] node rank (\d+): torchrun on (\S+) \((\S+), Ray node (\w+)\)")


def _cli(ray_cluster, cluster_root, runs_root) -> Cli:
    env = {**ray_cluster.env, **job_env(LAMAMBA_DATA_CACHE=str(cluster_root / "cache"))}
    return Cli(ray_cluster.network, env, runs_root, ["--backend", "ray", "--address", ray_cluster.address, "--cpu"])


def _placements(log: str) -> list[dict[int, tuple[str, str, str]]]:
    """Per attempt (in order): node rank -> (hostname, address, Ray node id) of its torchrun."""
    attempts = []
    for chunk in log.split("[lamamba] starting: ")[1:]:
        attempts.append({int(m.group(1)): m.group(2, 3, 4) for m in PLACED.finditer(chunk)})
    return attempts


def test_two_node_training_loses_its_worker_node_and_resumes_exactly(ray_cluster, cluster_root, digits_latents,
                                                                     reference_run):
    hosts = ray_cluster.network.hosts
    cli = _cli(ray_cluster, cluster_root, cluster_root / "ray-runs")
    run_id = cli.submit(f"data.manifest={digits_latents}", *TRAIN_OVERRIDES, "--nodes", "2", "--gpus-per-node", "1",
                        "--max-restarts", "1")
    run_dir = cli.runs_root / run_id
    # Files only, polled often: the steps after the second commit take a few seconds here.
    wait_for(lambda: 2 in committed(run_dir) or (run_dir / "launch" / "outcome.json").exists(),
             "the first checkpoint", 300, poll_s=0.05)
    assert STEPS not in committed(run_dir), "the run finished before its node could be removed"
    removed = time.monotonic()
    ray_cluster.remove_worker(1)  # node1's raylet, its workers, torchrun and rank: all at once
    # The attempt fails as a whole and the entrypoint starts the next one, which waits for 2 nodes.
    wait_for(lambda: "restart 1/1" in cli.logs(run_id), "the restart after the node loss", 180, poll_s=1.0)
    restarted = time.monotonic()
    replacement = ray_cluster.add_worker(1)  # a new Ray node (a new node id) on the same host
    joined = time.monotonic()
    assert cli.wait_state(run_id, ("SUCCEEDED", "FAILED", "STOPPED"), 420) == "SUCCEEDED", cli.logs(run_id)[-6000:]
    finished = time.monotonic()

    log = cli.logs(run_id)
    first, second = _placements(log)
    # One torchrun per node in each attempt: node ranks 0 and 1 on the two hosts, as the Ray task
    # that started each torchrun saw where it ran.
    for attempt in (first, second):
        assert sorted(attempt) == [0, 1], log[-6000:]
        assert sorted(place[:2] for place in attempt.values()) == sorted((h.hostname, h.address) for h in hosts)
    on_node1 = [next(node for host, _, node in attempt.values() if host == hosts[1].hostname)
                for attempt in (first, second)]
    assert on_node1[0] != replacement and on_node1[1] == replacement, (on_node1, replacement)
    # The first attempt ended on the node loss, in one line (the lost task, or the surviving
    # node's torchrun whose rank lost its peer, whichever Ray reports first).
    ended = re.search(r"\[lamamba\] node rank \d: torchrun (was lost \(\w+|exited with code -?\d+)"
                      r".*this attempt failed", log.split("restart 1/1")[0])
    assert ended, log[-6000:]
    resumed = int(re.search(r"resumed from \S+/checkpoints/step_(\d+)", log).group(1))
    assert 2 <= resumed < STEPS and f"finished: {STEPS} steps" in log, log[-6000:]
    assert "train succeeded (exit code 0, 2 attempt(s))" in log
    assert_same_weights(final_weights(run_dir), final_weights(reference_run))
    timeline = {"restart_logged_s": restarted - removed, "replacement_joined_s": joined - removed,
                "succeeded_s": finished - removed, "resumed_from_step": resumed, "ended_by": ended.group(1)}
    print(f"\nnode-loss timeline (s after the SIGKILL of node1's Ray node): {timeline}")


def test_a_sample_job_fans_out_over_both_nodes(ray_cluster, cluster_root, reference_run):
    hosts = ray_cluster.network.hosts
    cli = _cli(ray_cluster, cluster_root, cluster_root / "ray-sample")
    # Each worker reserves a whole node's CPUs, so the two cannot share one node.
    run_id = cli.submit(f"checkpoint={reference_run}/checkpoints/step_{STEPS:08d}", "num_samples=8", "shard_size=2",
                        "batch_size=2", "steps=2", "autoencoder.kind=identity", "autoencoder.image_channels=1",
                        "launcher=ray", "ray.num_workers=2", f"ray.cpus_per_worker={ray_cluster.cpus_per_node}",
                        "progress=false", job="sample", config=str(REPO / "configs" / "sample" / "tiny_cpu.yaml"))
    assert cli.wait_state(run_id, ("SUCCEEDED", "FAILED", "STOPPED"), 300) == "SUCCEEDED", cli.logs(run_id)[-6000:]
    assert "computed shards [0, 1, 2, 3]" in cli.logs(run_id)
    # Each shard's marker names the host whose worker computed it: both hosts took shards.
    out = cli.runs_root / run_id / "samples"
    hosts_of_shards = [json.loads((out / f"shard_{s:05d}.done").read_text())["host"] for s in range(4)]
    assert set(hosts_of_shards) == {h.hostname for h in hosts}, hosts_of_shards
    print(f"\nshards 0-3 computed on: {hosts_of_shards}")
