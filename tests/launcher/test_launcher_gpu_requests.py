"""What every Ray placement asks for: the training bundles, the driver of evaluate, the sample
actors - from the submission and the config, never from the cluster's current resources."""

import dataclasses

import pytest

from lamamba.config import ConfigError
from lamamba.evaluation.config import SampleConfig
from lamamba.evaluation.sampler import actor_plan
from launcher import entrypoint
from launcher.backends import Submission
from launcher.backends.kuberay import KubeRayBackend
from launcher.backends.ray import job_request
from launcher.ray_torchrun import node_bundle


def _sub(job="train", gpus=True, gpus_per_node=8):
    return Submission(job=job, run_id=f"{job}-x", run_dir=f"/shared/{job}-x", nodes=2, gpus_per_node=gpus_per_node,
                      gpus=gpus, python="python")


def test_training_bundles_reserve_the_requested_gpus():
    assert node_bundle(8) == {"CPU": 1, "GPU": 8}  # also on a cluster that has no GPU node yet
    assert node_bundle(0) == {"CPU": 1}


@pytest.mark.parametrize("cpu, gpus", [(False, 8), (True, 0)])
def test_entrypoint_passes_the_gpu_count_to_the_placement(tmp_path, cpu, gpus):
    args = entrypoint.build_parser().parse_args(
        ["train", f"--run-dir={tmp_path}", "--rendezvous=ray", "--nnodes=2", "--nproc-per-node=8",
         "--python=python", *(["--cpu"] if cpu else [])])
    cmd, _, _ = entrypoint.job_process_command(args, "cfg.yaml")
    assert cmd[:3] == ["python", "-m", "launcher.ray_torchrun"] and f"--gpus-per-node={gpus}" in cmd


def test_evaluate_driver_reserves_a_gpu_off_the_head():
    assert job_request(_sub("evaluate"))["entrypoint_num_gpus"] == 1
    assert job_request(_sub("evaluate", gpus=False))["entrypoint_num_gpus"] == 0
    assert job_request(_sub("train"))["entrypoint_num_gpus"] == 0  # its ranks reserve their GPUs
    assert "entrypointNumGpus: 1\n" in KubeRayBackend().render(_sub("evaluate"))
    assert "entrypointNumGpus" not in KubeRayBackend().render(_sub("sample"))


def test_kuberay_cpu_run_asks_for_no_gpus():
    assert "nvidia.com/gpu" not in KubeRayBackend().render(_sub("train", gpus=False))
    assert "nvidia.com/gpu: 8" in KubeRayBackend().render(_sub("train"))


def test_sample_actors_reserve_the_gpu_they_use():
    cfg = SampleConfig(checkpoint="c", launcher="ray")
    with_gpu = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, gpus_per_worker=1.0))
    assert actor_plan(with_gpu) == (with_gpu, {"num_gpus": 1.0, "num_cpus": 1.0})
    # No GPU reserved: the actors are told to compute on CPU, not on a GPU Ray gave someone else.
    plan_cfg, resources = actor_plan(cfg)
    assert plan_cfg.device == "cpu" and resources["num_gpus"] == 0
    with pytest.raises(ConfigError, match="gpus_per_worker > 0"):
        actor_plan(dataclasses.replace(cfg, device="cuda"))
