"""The KubeRay backend: a RayJob manifest (cluster/kuberay/rayjob.yaml.j2) applied with kubectl.

The RayJob creates a Ray cluster of ``--nodes`` worker pods, runs :mod:`launcher.entrypoint` on
it exactly as the Ray backend does, and tears the cluster down afterwards. The run dir should be
shared storage every pod reaches (an ``s3://`` runs root with credentials from ``--secret``).
Status, logs and cancel go through ``kubectl``.
"""

from __future__ import annotations

import subprocess
from typing import Any

from launcher import runs
from launcher.backends import Submission, cluster_file, render_template, run_tool
from launcher.backends.ray import entrypoint_gpus
from launcher.backends.slurm import default_cpus
from launcher.errors import LaunchError

RAY_VERSION = "2.60.0"


def rayjob_name(sub: Submission) -> str:
    return f"{sub.run_id}-{sub.submissions}"


class KubeRayBackend:
    name = "kuberay"
    artifact = "rayjob.yaml"

    def render(self, sub: Submission) -> str:
        opts = sub.options
        return render_template(
            opts.get("template") or cluster_file("kuberay", "rayjob.yaml.j2"),
            name=rayjob_name(sub), run_id=sub.run_id, job=sub.job, nodes=sub.nodes,
            gpus_per_node=sub.gpus_per_node if sub.gpus else 0, max_restarts=sub.max_restarts,
            entrypoint_gpus=entrypoint_gpus(sub),
            entrypoint=sub.checked_entrypoint("ray"),
            namespace=opts.get("namespace") or "default", image=opts.get("image") or "lamamba:latest",
            cpus_per_node=opts.get("cpus_per_task") or default_cpus(sub.gpus_per_node), memory_per_node=opts.get("memory") or f"{32 * max(1, sub.gpus_per_node)}Gi",
            secret=opts.get("secret") or "", ray_version=RAY_VERSION)

    def submit(self, sub: Submission, artifact_path: str) -> dict[str, Any]:
        run_tool(["kubectl", "create", "-f", artifact_path], "Kubernetes")
        return {"name": rayjob_name(sub), "namespace": sub.options.get("namespace") or "default"}

    def _kubectl(self, record: runs.RunRecord, *args: str) -> list[str]:
        return ["kubectl", "--namespace", record.handle["namespace"], *args]

    def status(self, record: runs.RunRecord) -> str:
        cmd = self._kubectl(record, "get", "rayjob", record.handle["name"],
                            "--output=jsonpath={.status.jobStatus} {.status.jobDeploymentStatus}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:  # deleted (cancelled, or cleaned up after its TTL)
            outcome = runs.read_outcome(record.run_dir)
            return outcome["state"] if outcome else runs.UNKNOWN
        # "<jobStatus> <jobDeploymentStatus>"; the job status is empty until the job starts.
        job_status, _, deployment = proc.stdout.strip("\n").partition(" ")
        if deployment.strip() == "Failed" and job_status not in (runs.SUCCEEDED, runs.STOPPED):
            return runs.FAILED
        return job_status or runs.PENDING

    def logs(self, record: runs.RunRecord, rank: int | None = None) -> str:
        if rank is not None:
            raise LaunchError("the KubeRay backend keeps one log per run (ranks are prefixed in it); drop --rank")
        # The submitter pod of K8sJobMode follows the Ray job's logs.
        return run_tool(self._kubectl(record, "logs", f"job/{record.handle['name']}"), "Kubernetes")

    def cancel(self, record: runs.RunRecord) -> None:
        run_tool(self._kubectl(record, "delete", "rayjob", record.handle["name"]), "Kubernetes")
        if runs.read_outcome(record.run_dir) is None:
            runs.write_outcome(record.run_dir, runs.STOPPED, -15, 0)
