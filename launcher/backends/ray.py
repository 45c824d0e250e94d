"""The Ray backend: a Ray job submitted to a cluster's job server (JobSubmissionClient).

The job's entrypoint is :mod:`launcher.entrypoint` with the Ray rendezvous: encode, sample and
evaluate run as the job's driver and fan out as Ray tasks on the cluster; training places one
torchrun per node (:mod:`launcher.ray_torchrun`). After a failure the entrypoint starts the job
again, up to ``--max-restarts`` times, and it resumes from its newest committed checkpoint.
The address is the job server's, e.g. ``http://head:8265`` (``--address`` or ``RAY_ADDRESS``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from launcher import runs
from launcher.backends import Submission
from launcher.errors import LaunchError


def job_request(sub: Submission) -> dict[str, Any]:
    """The keyword arguments of ``JobSubmissionClient.submit_job`` for this run."""
    runtime_env: dict[str, Any] = {}
    if sub.options.get("working_dir"):  # the code, uploaded; .gitignore'd files stay behind
        runtime_env["working_dir"] = sub.options["working_dir"]
    return {
        # A Ray submission id is used once; the run id and the submission count make it unique.
        "submission_id": f"{sub.run_id}-{sub.submissions}",
        "entrypoint": sub.checked_entrypoint("ray"),  # lamamba doctor on the driver's node, then the job
        "runtime_env": runtime_env,
        # The driver runs where these are free: evaluate computes on its driver, so it needs a GPU
        # node (the head has none); the other jobs' drivers only place their tasks and ranks.
        "entrypoint_num_gpus": entrypoint_gpus(sub),
        "metadata": {"lamamba_run_id": sub.run_id, "job": sub.job, "run_dir": sub.run_dir},
    }


def entrypoint_gpus(sub: Submission) -> int:
    """GPUs the job's driver reserves: 1 for evaluate (unless --cpu), else 0."""
    return 1 if sub.job == "evaluate" and sub.gpus and sub.gpus_per_node > 0 else 0


def _address(sub_or_handle: dict[str, Any]) -> str:
    address = sub_or_handle.get("address") or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise LaunchError("no Ray cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return address


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise LaunchError(f"cannot reach the Ray job server at {address}: {err}") from None


def _call(handle: dict[str, Any], method: str, *args: Any, **kwargs: Any) -> Any:
    """Call a JobSubmissionClient method; a refusal (unknown job, duplicate id) becomes one line."""
    client = _client(handle["address"])
    try:
        return getattr(client, method)(*args, **kwargs)
    except (ConnectionError, RuntimeError) as err:
        raise LaunchError(f"Ray job server at {handle['address']}: {method} failed: {err}") from None


class RayBackend:
    name = "ray"
    artifact = "ray_job.json"

    def render(self, sub: Submission) -> str:
        address = sub.options.get("address") or os.environ.get("RAY_ADDRESS", "")
        return json.dumps({"address": address, **job_request(sub)}, indent=2) + "\n"

    def submit(self, sub: Submission, artifact_path: str) -> dict[str, Any]:
        handle = {"address": _address(sub.options)}
        return {**handle, "submission_id": _call(handle, "submit_job", **job_request(sub))}

    def status(self, record: runs.RunRecord) -> str:
        return _call(record.handle, "get_job_status", record.handle["submission_id"]).value

    def logs(self, record: runs.RunRecord, rank: int | None = None) -> str:
        if rank is not None:
            raise LaunchError("the Ray backend keeps one log per run (ranks are prefixed in it); drop --rank")
        return _call(record.handle, "get_job_logs", record.handle["submission_id"])

    def cancel(self, record: runs.RunRecord) -> None:
        _call(record.handle, "stop_job", record.handle["submission_id"])
