"""Where a SLURM task sits in its allocation: node rank, rendezvous host and port.

Pure functions of the environment SLURM gives each task (``SLURM_JOB_NODELIST``,
``SLURM_NODEID``/``SLURM_PROCID``, ``SLURM_NNODES``, ``SLURM_JOB_ID``), so every node of a job
computes the same rendezvous without talking to the others, and a requeued job (same job id)
finds the same port again. ``python -m launcher.slurm_env`` prints the result as shell exports.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass
from typing import Mapping

# Rendezvous ports live in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's ephemeral range
# (32768+), so an outgoing connection never holds the port a job needs.
PORT_BASE = 15000
PORT_SPAN = 15000


class SlurmEnvError(ValueError):
    """The SLURM environment is missing a variable or holds a malformed one."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: "a[1,2],b" -> ["a[1,2]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SlurmEnvError(f"unbalanced ']' in node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SlurmEnvError(f"unbalanced '[' in node list {text!r}")
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _expand_ranges(spec: str, nodelist: str) -> list[str]:
    """"01-03,07" -> ["01", "02", "03", "07"], keeping the zero padding of each range."""
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise SlurmEnvError(f"bad range {item!r} in node list {nodelist!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise SlurmEnvError(f"descending range {item!r} in node list {nodelist!r}")
        width = len(lo)
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list, in order.

    "gpu[01-03,07],cpu5" -> ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]; several bracket groups
    in one name expand as a product: "r[1-2]n[1-2]" -> ["r1n1", "r1n2", "r2n1", "r2n2"].
    """
    hosts: list[str] = []
    for expr in _split_top_level(nodelist):
        pieces = re.split(r"\[([^\]]*)\]", expr)  # literal, ranges, literal, ranges, ..., literal
        choices = [[p] if i % 2 == 0 else _expand_ranges(p, nodelist) for i, p in enumerate(pieces)]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    if not hosts:
        raise SlurmEnvError(f"empty node list {nodelist!r}")
    return hosts


# Each job owns STEP_PORTS consecutive ports, one per job step (the batch script starts the
# training step again after a failure: a fresh rendezvous on a port no old process holds).
STEP_PORTS = 8


def port_for_job(job_id: int, step_id: int = 0) -> int:
    """The rendezvous port of one step of a job: fixed by the ids, so every node agrees."""
    return PORT_BASE + (job_id * STEP_PORTS + step_id % STEP_PORTS) % PORT_SPAN


@dataclass(frozen=True)
class Rendezvous:
    """How one node task joins the job's torch.distributed rendezvous."""

    job_id: int
    step_id: int  # SLURM_STEP_ID: the batch script's restarts of the training step differ in it
    restart: int  # SLURM_RESTART_COUNT: a requeued job starts its steps again from 0
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    hosts: tuple[str, ...]

    @property
    def rdzv_id(self) -> str:
        """The torchrun rendezvous id: one per step of one (re)start of the job."""
        return f"slurm-{self.job_id}-{self.restart}-{self.step_id}"


def _int_var(env: Mapping[str, str], *names: str, default: int | None = None) -> int:
    for name in names:
        if name in env:
            try:
                return int(env[name])
            except ValueError:
                raise SlurmEnvError(f"{name}={env[name]!r} is not an integer") from None
    if default is not None:
        return default
    raise SlurmEnvError(f"{' or '.join(names)} is not set: not inside a SLURM job step?")


def rendezvous_from_env(env: Mapping[str, str]) -> Rendezvous:
    """Read the rendezvous of this task from a SLURM environment (one task per node).

    The master is the first host of the node list; the node rank is ``SLURM_NODEID`` (equal to
    ``SLURM_PROCID`` with one task per node).
    """
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise SlurmEnvError("SLURM_JOB_NODELIST is not set: not inside a SLURM job?")
    hosts = tuple(expand_nodelist(nodelist))
    job_id = _int_var(env, "SLURM_JOB_ID", "SLURM_JOBID")
    has_count = "SLURM_NNODES" in env or "SLURM_JOB_NUM_NODES" in env
    nnodes = _int_var(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES") if has_count else len(hosts)
    node_rank = _int_var(env, "SLURM_NODEID", "SLURM_PROCID")
    if nnodes != len(hosts):
        raise SlurmEnvError(f"SLURM_NNODES={nnodes} but the node list {nodelist!r} has {len(hosts)} hosts")
    if not 0 <= node_rank < nnodes:
        raise SlurmEnvError(f"node rank {node_rank} is outside [0, {nnodes})")
    step_id = _int_var(env, "SLURM_STEP_ID", "SLURM_STEPID", default=0)
    restart = _int_var(env, "SLURM_RESTART_COUNT", default=0)
    return Rendezvous(job_id=job_id, step_id=step_id, restart=restart, nnodes=nnodes, node_rank=node_rank,
                      master_addr=hosts[0], master_port=port_for_job(job_id, step_id), hosts=hosts)


def main() -> int:
    import os

    try:
        rdzv = rendezvous_from_env(os.environ)
    except SlurmEnvError as err:
        print(f"slurm_env: {err}", file=sys.stderr)
        return 2
    print(f"export MASTER_ADDR={rdzv.master_addr} MASTER_PORT={rdzv.master_port} "
          f"NODE_RANK={rdzv.node_rank} NNODES={rdzv.nnodes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
