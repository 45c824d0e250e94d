"""A Ray cluster on namespace hosts: the head on the first host, one worker node on each other host.

Each node has its own address (so Ray sees separate nodes with their own node ids and places
bundles on them for real) and its own temp dir under ``root``. Jobs are submitted to the head's
job server (:attr:`RayCluster.address`, reachable from the hosts); :meth:`remove_worker` kills a
worker host's processes as a machine failure would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cluster.local.hosts import Host, Network
from cluster.local.procs import start, stop, wait_until

GCS_PORT, DASHBOARD_PORT = 6379, 8265  # each host is its own network namespace: no clash


def takes_jobs(address: str, timeout_s: float = 60.0) -> bool:
    """Whether the job server at ``address`` runs a no-op job to the end: it answers HTTP before
    its agent can take jobs ("No available agent to submit job")."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        job = client.submit_job(entrypoint="true")
    except (ConnectionError, RuntimeError):
        return False
    deadline = time.monotonic() + timeout_s
    while not (status := client.get_job_status(job)).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    return status.value == "SUCCEEDED"


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


class RayCluster:
    """``ray start --block`` on every host of ``network``; ``cpus_per_node`` logical CPUs each."""

    def __init__(self, network: Network, root: Path, cpus_per_node: int = 1, env: dict[str, str] | None = None):
        self.network, self.root = network, Path(root)
        self.env = {**(env or os.environ), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self.cpus_per_node = cpus_per_node
        self.procs: dict[int, subprocess.Popen] = {}
        head = network.hosts[0]
        self.gcs = f"{head.address}:{GCS_PORT}"
        self.address = f"http://{head.address}:{DASHBOARD_PORT}"
        try:
            self._start(head, ["--head", f"--port={GCS_PORT}", "--include-dashboard=true",
                               f"--dashboard-host={head.address}", f"--dashboard-port={DASHBOARD_PORT}"])
            # Workers join as soon as the GCS answers; the job server comes up meanwhile.
            wait_until(self._gcs_up, "the Ray head's GCS", 120, poll_s=0.5, alive=self.procs[0], log=self._log(head))
            for h in network.hosts[1:]:
                self._start(h, [f"--address={self.gcs}"])
            wait_until(lambda: self.alive_nodes() == len(network.hosts), "every Ray node to join", 300, poll_s=1.0)
            wait_until(self._takes_jobs, "the Ray job server to take jobs", 300, poll_s=1.0)
        except BaseException:
            self.close()
            raise

    def _log(self, host: Host) -> Path:
        return self.root / f"ray-{host.hostname}.log"

    def _start(self, host: Host, args: list[str]) -> None:
        # Short temp dirs: Ray's socket paths have a length limit.
        temp = self.root / host.hostname
        temp.mkdir(parents=True, exist_ok=True)
        cmd = [_ray_cli(), "start", "--block", f"--node-ip-address={host.address}", f"--num-cpus={self.cpus_per_node}",
               f"--temp-dir={temp}", "--disable-usage-stats", *args]
        self.procs[host.index] = start(host.command(cmd), self._log(host), self.env)

    def run(self, cmd: list[str], host: int = 0, **kwargs) -> subprocess.CompletedProcess:
        """``cmd`` on one host with this cluster's environment."""
        env = {**self.env, **kwargs.pop("env", {})}
        return subprocess.run(self.network.hosts[host].command(cmd), env=env, capture_output=True, text=True,
                              **kwargs)

    def _gcs_up(self) -> bool:
        host, port = self.gcs.split(":")
        probe = [sys.executable, "-c", f"import socket; socket.create_connection(('{host}', {port}), timeout=2)"]
        return self.run(probe, timeout=30).returncode == 0

    def _takes_jobs(self) -> bool:
        probe = [sys.executable, "-c", f"import sys; from cluster.local.ray import takes_jobs; "
                 f"sys.exit(not takes_jobs('{self.address}'))"]
        return self.run(probe, timeout=90).returncode == 0

    def alive_nodes(self) -> int:
        """How many nodes the head counts as alive (0 while its job server is not up)."""
        probe = [sys.executable, "-c", "import json, urllib.request; nodes = json.load(urllib.request.urlopen("
                 f"'{self.address}/nodes?view=summary', timeout=5))['data']['summary']; "
                 "print(sum(n['raylet']['state'] == 'ALIVE' for n in nodes))"]
        out = self.run(probe, timeout=30)
        return int(out.stdout.strip() or 0) if out.returncode == 0 else 0

    def remove_worker(self, index: int) -> None:
        """Kill every process of worker host ``index`` at once (a node lost mid-run)."""
        assert index > 0, "the head is host 0"
        self.network.kill_host(self.network.hosts[index])
        self.procs.pop(index).wait(timeout=30)

    def close(self) -> None:
        """Stop the workers, then the head (SIGTERM to ``ray start --block`` stops its node)."""
        for index in sorted(self.procs, reverse=True):
            stop(self.procs[index], grace_s=20)
            self.network.kill_host(self.network.hosts[index])  # what the node left behind
        self.procs.clear()
