"""Hosts as Linux network namespaces: ``<prefix>-h<i>`` at 10.<a>.<b>.<i+1>/24 on a bridge that
lives in its own namespace (``<prefix>-sw``), so nothing is added to this machine's own network.

Each host has loopback, its address, a hostname (``node<i>``) and an ``/etc/hosts`` naming every
host: a process runs on a host through ``host.command(...)``, which enters the network namespace
(``nsenter``; not ``ip netns exec``, whose fresh /sys hides the cgroup filesystem slurmd needs)
and a private UTS + mount namespace holding the hostname and a bind-mounted hosts file.
:meth:`Network.close` kills every process left in the namespaces by PID (``ip netns pids``) and
deletes them.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cluster.local.procs import stop_pids

def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def unavailable() -> str:
    """Why a namespace cluster cannot run here ('' when it can)."""
    if os.geteuid() != 0:
        return "the local cluster needs root (network namespaces, slurmd)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not found (iproute2 / util-linux)"
    probe = f"lmprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as err:
        return f"network namespaces are not available: {err}"
    _ip("netns", "del", probe)
    return ""


@dataclass(frozen=True)
class Host:
    """One namespace host."""

    index: int
    netns: str
    hostname: str
    address: str
    hosts_file: str

    def command(self, cmd: list[str]) -> list[str]:
        """``cmd`` run on this host (its network, hostname and /etc/hosts)."""
        # nsenter and unshare exec, and so does the shell: the pid of the returned command is cmd's.
        setup = f'mount --bind {self.hosts_file} /etc/hosts && hostname {self.hostname} && exec "$@"'
        return ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--uts", "--mount", "sh", "-c", setup,
                "sh", *cmd]

    def pids(self) -> list[int]:
        """Every process in this host's namespace."""
        return [int(p) for p in _ip("netns", "pids", self.netns).split()]


class Network:
    """``count`` hosts on one bridge; a context manager that always cleans up."""

    def __init__(self, count: int, root: Path, prefix: str | None = None):
        self.prefix = prefix or f"lm{os.getpid() % 100000}"
        self.switch = f"{self.prefix}-sw"
        # Private namespaces: any subnet works; a random one keeps two clusters apart in logs.
        a, b = random.randrange(100, 250), random.randrange(0, 250)
        hosts_file = Path(root) / "hosts"
        self.hosts = [Host(i, f"{self.prefix}-h{i}", f"node{i}", f"10.{a}.{b}.{i + 1}", str(hosts_file))
                      for i in range(count)]
        hosts_file.parent.mkdir(parents=True, exist_ok=True)
        hosts_file.write_text("127.0.0.1 localhost\n" + "".join(f"{h.address} {h.hostname}\n" for h in self.hosts))
        self._created: list[str] = []
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        _ip("netns", "add", self.switch)
        self._created.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for h in self.hosts:
            _ip("netns", "add", h.netns)
            self._created.append(h.netns)
            port = f"p{h.index}"
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            _ip("-n", h.netns, "link", "set", "eth0", "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop what is left on the hosts (TERM, then KILL) and delete the namespaces."""
        hosts = [h for h in self.hosts if h.netns in self._created]
        stop_pids([p for h in hosts for p in h.pids()], grace_s=5.0)
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._created.clear()
