"""A SLURM cluster on namespace hosts: munged, slurmctld on the first host, one slurmd per host.

Everything lives under one state directory (config, munge key and socket, spool, logs); the
daemons run in the foreground as children of this process. The commands (sbatch, squeue, ...)
reach the controller from any host with ``SLURM_CONF`` set (:meth:`SlurmCluster.env`): run them
with ``host.command(...)``. Accounting is off (no slurmdbd), so ``sacct`` is unavailable and
finished jobs stay visible to ``squeue --states=all`` for ``MinJobAge`` seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cluster.local.hosts import Network
from cluster.local.procs import start, stop, wait_until

DAEMONS = ("munged", "slurmctld", "slurmd")
SLURMCTLD_PORT, SLURMD_PORT = 6817, 6818  # each host is its own network namespace: no clash

SLURM_CONF = """\
ClusterName=lamamba-local
SlurmctldHost={ctl_name}({ctl_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait={kill_wait}
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def unavailable() -> str:
    """Why SLURM cannot run here ('' when it can)."""
    missing = [d for d in (*DAEMONS, "sbatch") if shutil.which(d) is None]
    return f"{', '.join(missing)} not found: apt-get install slurm-wlm munge" if missing else ""


class SlurmCluster:
    """munged + slurmctld + one slurmd on each of the first ``nodes`` hosts of ``network`` (all
    by default); :meth:`close` stops them by PID."""

    def __init__(self, network: Network, root: Path, cpus_per_node: int = 2, kill_wait_s: int = 30,
                 nodes: int = 0):
        self.network, self.root = network, Path(root)
        self.hosts = network.hosts[:nodes or len(network.hosts)]
        self.procs: list[subprocess.Popen] = []
        for sub in ("state", "run", "log", "munge", *(f"spool/{h.hostname}" for h in self.hosts)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.conf = self.root / "slurm.conf"
        ctl = network.hosts[0]
        nodes = "\n".join(f"NodeName={h.hostname} NodeAddr={h.address} CPUs={cpus_per_node} State=UNKNOWN"
                          for h in self.hosts)
        self.conf.write_text(SLURM_CONF.format(
            ctl_name=ctl.hostname, ctl_addr=ctl.address, ctld_port=SLURMCTLD_PORT, slurmd_port=SLURMD_PORT,
            munge_socket=self.munge_socket, root=self.root, kill_wait=kill_wait_s, nodes=nodes))
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment whose SLURM commands talk to this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def _start(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        munge_log = self.root / "log" / "munged.log"
        # -f: run as root on a key in a temp dir; the socket is a file, so every namespace reaches it.
        munged = start(["munged", "-F", "-f", f"--key-file={key}", f"--socket={self.munge_socket}",
                        f"--pid-file={self.root}/run/munged.pid", f"--log-file={munge_log}",
                        f"--seed-file={self.root}/munge/seed"], munge_log)
        self.procs.append(munged)
        wait_until(self.munge_socket.exists, "munged's socket", 30, alive=munged, log=munge_log)
        env = self.env()
        ctl, ctl_log = self.network.hosts[0], self.root / "log" / "slurmctld.out"
        self.procs.append(start(ctl.command(["slurmctld", "-D", "-i", "-f", str(self.conf)]), ctl_log, env))
        for h in self.hosts:
            self.procs.append(start(h.command(["slurmd", "-D", "-f", str(self.conf), "-N", h.hostname]),
                                    self.root / "log" / f"slurmd-{h.hostname}.out", env))
        wait_until(self.all_idle, "every slurmd to register as idle", 90, poll_s=0.5,
                   alive=self.procs[1], log=ctl_log)

    def run(self, *cmd: str, host: int = 0, check: bool = True) -> str:
        """A SLURM command on one host; returns its stdout."""
        proc = subprocess.run(self.network.hosts[host].command(list(cmd)), capture_output=True,
                              text=True, env=self.env(), timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def all_idle(self) -> bool:
        """Every node idle: no job running or still completing (its processes being cleaned up) on it."""
        out = self.run("sinfo", "--noheader", "--Node", "--format=%N %T", check=False).split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(h.hostname) == "idle" for h in self.hosts)

    def close(self) -> None:
        """Cancel every job, wait (bounded) for them to go, then stop the daemons by PID."""
        if len(self.procs) > 1 and self.procs[1].poll() is None:
            try:
                self.run("scancel", "--full", "--user=root", check=False)
                wait_until(lambda: not self.run("squeue", "--noheader", check=False).strip(), "jobs to end", 40)
            except (TimeoutError, subprocess.TimeoutExpired):
                pass  # the namespaces' cleanup kills what is left
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()
