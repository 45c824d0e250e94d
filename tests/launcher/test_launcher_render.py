"""Golden files of the rendered launch artifacts: sbatch scripts and KubeRay RayJob manifests.

Regenerate after an intended template change with LAMAMBA_UPDATE_GOLDEN=1 and review the diff.
"""

import os
from pathlib import Path

import pytest
import yaml

from launcher.backends import Submission
from launcher.backends.kuberay import KubeRayBackend
from launcher.backends.slurm import SlurmBackend
from launcher.errors import LaunchError

GOLDEN = Path(__file__).parent / "golden"


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LAMAMBA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with LAMAMBA_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def _submission(job="train", nodes=1, gpus=8, max_restarts=0, **options):
    return Submission(job=job, run_id=f"{job}-xl-256-0123abcd", run_dir=f"/shared/runs/{job}-xl-256-0123abcd",
                      nodes=nodes, gpus_per_node=gpus, max_restarts=max_restarts, python="python", options=options)


SLURM_OPTIONS = {"partition": "gpu", "time": "48:00:00", "account": "diffusion", "workdir": "/shared/lamamba",
                 "pythonpath": "/shared/lamamba", "setup": ["source .venv/bin/activate"],
                 "sbatch_args": ["--exclusive"]}


@pytest.mark.parametrize("nodes", [1, 4])
def test_sbatch_golden(nodes):
    script = SlurmBackend().render(_submission(nodes=nodes, **SLURM_OPTIONS))
    _check_golden(f"train_{nodes}node.sbatch", script)
    # What must hold whatever the layout: one task per node, requeue before the time limit.
    assert f"#SBATCH --nodes={nodes}\n" in script and "#SBATCH --ntasks-per-node=1\n" in script
    assert "#SBATCH --signal=B:USR1@120\n" in script and "#SBATCH --requeue\n" in script
    assert "trap forward_preemption USR1" in script and "--rendezvous=slurm" in script
    assert "srun --nodes" in script and "--cpus-per-task=" in script.split("srun --nodes")[1]  # not inherited


@pytest.mark.parametrize("nodes, step_restarts", [(1, 0), (4, 3)])
def test_sbatch_restarts_a_multi_node_step_as_a_whole(nodes, step_restarts):
    """--max-restarts 3: several nodes restart together as a new job step; one node's entrypoint
    restarts itself (its --max-restarts), so the script does not."""
    script = SlurmBackend().render(_submission(nodes=nodes, max_restarts=3, **SLURM_OPTIONS))
    assert f'[ "$attempt" -ge {step_restarts} ]' in script and "--max-restarts=3" in script


def test_sbatch_single_node_job_without_gpu_request():
    script = SlurmBackend().render(_submission(job="encode", gpus=0, workdir="/w", pythonpath="/w"))
    _check_golden("encode_1node.sbatch", script)
    assert "--gpus-per-node" not in script.split("srun")[0]


def test_sbatch_refuses_multi_node_ray_jobs():
    with pytest.raises(LaunchError, match="one SLURM node"):
        SlurmBackend().render(_submission(job="sample", nodes=2))


@pytest.mark.parametrize("nodes", [1, 4])
def test_rayjob_golden(nodes):
    manifest = KubeRayBackend().render(_submission(nodes=nodes, image="ghcr.io/example/lamamba:0.1.0",
                                                   namespace="research", secret="lamamba-s3"))
    _check_golden(f"train_{nodes}node_rayjob.yaml", manifest)
    doc = yaml.safe_load(manifest)  # valid YAML with the structure KubeRay expects
    assert doc["kind"] == "RayJob" and doc["metadata"]["name"] == "train-xl-256-0123abcd-1"
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == nodes
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 8
    doctor, job = doc["spec"]["entrypoint"].split(" && ")  # lamamba doctor first, the job only if it passes
    assert doctor.startswith("python -m launcher.cli doctor --job=train --run-dir=/shared/runs/")
    assert job.startswith("python -m launcher.entrypoint train --run-dir=/shared/runs/")
    assert f"--nnodes={nodes}" in doc["spec"]["entrypoint"]


@pytest.mark.parametrize("backend", ["local", "slurm", "ray", "kuberay"])
def test_dry_run_prints_the_artifact_and_submits_nothing(backend, tmp_path, capsys):
    import json

    from launcher.cli import main

    config = tmp_path / "digits.yaml"
    config.write_text("source: {kind: digits}\n")
    root = tmp_path / "runs"
    assert main(["submit", "encode", str(config), "--backend", backend, "--runs-root", str(root),
                 "--address", "http://head:8265", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-m launcher.entrypoint encode" in out
    assert not root.exists()  # nothing written, nothing submitted
    if backend == "ray":
        request = json.loads(out)
        assert request["address"] == "http://head:8265" and request["submission_id"].startswith("encode-digits-")
        doctor, job = request["entrypoint"].split(" && ")
        assert doctor.startswith("python -m launcher.cli doctor --job=encode --run-dir=")
        assert job.startswith("python -m launcher.entrypoint encode --run-dir=")
