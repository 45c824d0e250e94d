"""Backends: where a run executes, and how to ask it for its status, logs, or to stop.

Every backend renders one launch artifact from a :class:`Submission` (a shell command, an sbatch
script, a Ray job request, a RayJob manifest), submits it, and later answers status, logs and
cancel from the handle it returned, which the launcher stores in the run's record.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from launcher.errors import LaunchError
from launcher.runs import RunRecord


@dataclass(frozen=True)
class Submission:
    """One run as the backends see it: the job, its fixed run dir and the resources it asks for."""

    job: str
    run_id: str
    run_dir: str
    nodes: int = 1
    gpus_per_node: int = 1  # processes per node for training (ranks on CPU where there is no GPU)
    gpus: bool = True  # False: CPU ranks; the scheduler is asked for no GPUs
    max_restarts: int = 0
    python: str = "python"
    submissions: int = 1  # how many times this run has been submitted, this one included
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific (partition, address, ...)

    def doctor_command(self) -> list[str]:
        """``python -m launcher.cli doctor ...``: every job template runs it first, on each node, so a
        node that cannot run the job (no working CUDA, S3 unreachable, weights missing) stops it
        before start-up, with the reason."""
        return [self.python, "-m", "launcher.cli", "doctor", f"--job={self.job}", f"--run-dir={self.run_dir}"]

    def checked_entrypoint(self, rendezvous: str) -> str:
        """The shell line of a Ray job's driver: the doctor, then the entrypoint if it passed."""
        return f"{shlex.join(self.doctor_command())} && {shlex.join([self.python, *self.entrypoint_args(rendezvous)])}"

    def entrypoint_args(self, rendezvous: str) -> list[str]:
        """``-m launcher.entrypoint ...``: what each backend starts on the compute side."""
        return ["-m", "launcher.entrypoint", self.job, f"--run-dir={self.run_dir}", f"--rendezvous={rendezvous}",
                f"--nnodes={self.nodes}", f"--nproc-per-node={self.gpus_per_node}",
                f"--max-restarts={self.max_restarts}", f"--python={self.python}", *([] if self.gpus else ["--cpu"])]


class Backend(Protocol):
    name: str
    artifact: str  # file name of the rendered artifact under <run_dir>/launch/

    def render(self, sub: Submission) -> str:
        """The launch artifact's text (what --dry-run prints)."""

    def submit(self, sub: Submission, artifact_path: str) -> dict[str, Any]:
        """Start the run from the artifact saved at ``artifact_path``; returns the handle to record."""

    def status(self, record: RunRecord) -> str:
        """One of runs.PENDING / RUNNING / SUCCEEDED / FAILED / STOPPED / UNKNOWN."""

    def logs(self, record: RunRecord, rank: int | None = None) -> str:
        """The run's log so far (the job's combined output, or one rank's where the backend has them)."""

    def cancel(self, record: RunRecord) -> None:
        """Stop the run."""


BACKENDS = ("local", "slurm", "ray", "kuberay")


def get_backend(name: str) -> Backend:
    if name == "local":
        from launcher.backends.local import LocalBackend

        return LocalBackend()
    if name == "slurm":
        from launcher.backends.slurm import SlurmBackend

        return SlurmBackend()
    if name == "ray":
        from launcher.backends.ray import RayBackend

        return RayBackend()
    if name == "kuberay":
        from launcher.backends.kuberay import KubeRayBackend

        return KubeRayBackend()
    raise LaunchError(f"unknown backend {name!r} (backends: {', '.join(BACKENDS)})")


def run_tool(cmd: list[str], what: str) -> str:
    """Run a cluster tool (sbatch, squeue, kubectl, ...) and return its stdout; errors name the tool."""
    if shutil.which(cmd[0]) is None:
        raise LaunchError(f"{cmd[0]} not found on PATH: is this a {what} login node?")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LaunchError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}): {detail[-1] if detail else ''}")
    return proc.stdout


def render_template(path: str | Path, **values: Any) -> str:
    """Render a Jinja2 template; a value the template names but nobody passed is an error."""
    import jinja2

    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"template not found: {path}")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(path.read_text()).render(**values)
    except jinja2.TemplateError as err:
        raise LaunchError(f"{path}: {err}") from None


def cluster_file(*parts: str) -> Path:
    """A file shipped under cluster/ (the templates)."""
    import cluster

    return Path(cluster.__file__).parent.joinpath(*parts)


def read_text(url: str) -> str:
    """A log file's text ('' if it does not exist yet)."""
    from lamamba import storage

    return storage.read_bytes(url).decode(errors="replace") if storage.exists(url) else ""
