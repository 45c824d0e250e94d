"""A Ray cluster on namespace hosts: the head on the first host, one worker node on each other host.

Each node has its own address (so Ray sees separate nodes with their own node ids and places
bundles on them for real) and its own temp dir under ``root``. Jobs are submitted to the head's
job server (:attr:`RayCluster.address`, reachable from the hosts); :meth:`remove_worker` kills a
worker's Ray node with everything it runs at once, as a machine failure would (other processes
on that host, e.g. a slurmd of the same local cluster, are left alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cluster.local.hosts import Host, Network
from cluster.local.procs import start, stop, stop_pids, wait_until
from launcher.entrypoint import descendants

GCS_PORT, DASHBOARD_PORT = 6379, 8265  # each host is its own network namespace: no clash
# Every node's object store lives in this machine's /dev/shm; the jobs here pass little data.
OBJECT_STORE_BYTES = 200 * 1024**2


def takes_jobs(address: str, timeout_s: float = 60.0) -> bool:
    """Whether the job server at ``address`` runs a no-op job to the end: it answers HTTP before
    its agent can take jobs ("No available agent to submit job")."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    try:  # requests' connection errors are OSErrors; refusals are RuntimeErrors
        client = JobSubmissionClient(address)
        job = client.submit_job(entrypoint="true")
        while not (status := client.get_job_status(job)).is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
    except (OSError, RuntimeError):
        return False
    return status.value == "SUCCEEDED"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


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
            head_args = ["--head", f"--port={GCS_PORT}", "--include-dashboard=true",
                         f"--dashboard-host={head.address}", f"--dashboard-port={DASHBOARD_PORT}"]
            # Workers join once the head node is registered (its GCS port answers before that, and
            # a worker that joins then fails with "No node info found for head node").
            self._start_until([(head, head_args)], lambda: self.alive_nodes() >= 1, "the Ray head")
            self._start_until([(h, [f"--address={self.gcs}"]) for h in network.hosts[1:]],
                              lambda: self.alive_nodes() == len(network.hosts), "every Ray node to join")
            wait_until(self._takes_jobs, "the Ray job server to take jobs", 300, poll_s=1.0)
        except BaseException:
            self.close()
            raise

    def _start_until(self, nodes: list[tuple[Host, list[str]]], ready, what: str, attempts: int = 3) -> None:
        """Start ``nodes`` and wait for ``ready``; a node whose ``ray start`` exits is started again
        (up to ``attempts`` times): on a loaded machine a raylet can miss Ray's fixed 30 s
        registration window and give up."""
        left = {host.index: attempts for host, _ in nodes}
        for host, args in nodes:
            self._start(host, args)
        deadline = time.monotonic() + 300
        while not ready():
            for host, args in nodes:
                if self.procs[host.index].poll() is not None:
                    left[host.index] -= 1
                    if left[host.index] == 0:
                        tail = self._log(host).read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{what}: ray start on {host.hostname} failed {attempts} times\n{tail}")
                    stop_pids(self._node_pids(host), grace_s=5.0)  # what the failed start left running
                    self._start(host, args)
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after 300 s waiting for {what}")
            time.sleep(1.0)

    def _log(self, host: Host) -> Path:
        return self.root / f"ray-{host.hostname}.log"

    def _start(self, host: Host, args: list[str]) -> None:
        # Short temp dirs: Ray's socket paths have a length limit.
        temp = self.root / host.hostname
        temp.mkdir(parents=True, exist_ok=True)
        cmd = [_ray_cli(), "start", "--block", f"--node-ip-address={host.address}", f"--num-cpus={self.cpus_per_node}",
               f"--temp-dir={temp}", f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats", *args]
        self.procs[host.index] = start(host.command(cmd), self._log(host), self.env)

    def run(self, cmd: list[str], host: int = 0, **kwargs) -> subprocess.CompletedProcess:
        """``cmd`` on one host with this cluster's environment."""
        env = {**self.env, **kwargs.pop("env", {})}
        return subprocess.run(self.network.hosts[host].command(cmd), env=env, capture_output=True, text=True,
                              **kwargs)

    def _takes_jobs(self) -> bool:
        probe = [sys.executable, "-c", f"import sys; from cluster.local.ray import takes_jobs; "
                 f"sys.exit(not takes_jobs('{self.address}'))"]
        return self.run(probe, timeout=90).returncode == 0

    def alive(self) -> dict[str, str]:
        """Node id -> address of every node the head counts as alive ({} while its job server is not up)."""
        probe = [sys.executable, "-c", "import json, urllib.request; nodes = json.load(urllib.request.urlopen("
                 f"'{self.address}/nodes?view=summary', timeout=5))['data']['summary']; "
                 "print(json.dumps({n['raylet']['nodeId']: n['raylet']['nodeManagerAddress'] for n in nodes "
                 "if n['raylet']['state'] == 'ALIVE'}))"]
        out = self.run(probe, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}

    def alive_nodes(self) -> int:
        """How many nodes the head counts as alive (0 while its job server is not up)."""
        return len(self.alive())

    def _node_pids(self, host: Host) -> list[int]:
        """Every process of the Ray node on ``host``: those naming its temp dir (raylet, GCS,
        agents; also left over from a failed start) and everything below them (workers, the
        processes jobs started). Other processes on the host (a slurmd) are not touched."""
        temp = str(self.root / host.hostname).encode()
        roots = [p for p in host.pids() if temp in _cmdline(p)]
        return sorted({p for r in roots for p in (r, *descendants(r))})

    def add_worker(self, index: int) -> str:
        """Start a Ray node on worker host ``index`` again (a replacement); returns its new node id
        once the head counts it alive. The head may still count a removed node alive for a while
        (until it has missed enough health checks), so the new node is told apart by its id."""
        host = self.network.hosts[index]
        known = set(self.alive())

        def replacement() -> str:
            return next((node for node, address in self.alive().items()
                         if address == host.address and node not in known), "")

        self._start_until([(host, [f"--address={self.gcs}"])], replacement, f"the replacement node on {host.hostname}")
        return replacement()

    def remove_worker(self, index: int) -> None:
        """SIGKILL every process of the Ray node on worker host ``index`` at once (a node lost
        mid-run, with the ranks it ran)."""
        assert index > 0, "the head is host 0"
        proc = self.procs.pop(index)
        stop_pids([proc.pid, *descendants(proc.pid), *self._node_pids(self.network.hosts[index])], grace_s=0.0)
        proc.wait(timeout=30)

    def close(self) -> None:
        """Stop the workers, then the head (SIGTERM to ``ray start --block`` stops its node), then
        kill what a node left behind."""
        for index in sorted(self.procs, reverse=True):
            host, proc = self.network.hosts[index], self.procs[index]
            tree = [*descendants(proc.pid), *self._node_pids(host)]
            stop(proc, grace_s=20)
            stop_pids(tree + self._node_pids(host), grace_s=5.0)
        self.procs.clear()
