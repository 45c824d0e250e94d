"""The device policy (lamamba.devices): which device each rank, worker and task picks, and the
refusal to train on the CPU when the job expects GPUs. CUDA is injected as a CudaProbe."""

import pytest
import torch

from lamamba.devices import CudaProbe, GPUUnavailableError, gpu_expectation, select_device, tf32_mode

CPU_BUILD = CudaProbe("2.13.0+cpu", None, False, 0, None, "")
OLD_DRIVER = CudaProbe("2.13.0", "13.0", False, 0, "535.104.05",
                       "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020)")


def gpus(count: int) -> CudaProbe:
    return CudaProbe("2.13.0", "13.0", True, count, "580.65", "", ("NVIDIA H100",) * count)


@pytest.mark.parametrize("local_rank, env, want", [
    (0, {}, "cuda:0"),
    (3, {}, "cuda:3"),
    (2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, "cuda:2"),  # logical index among the visible ones
    (5, {"CUDA_VISIBLE_DEVICES": "5"}, "cuda:0"),  # a scheduler bound one GPU to this rank
])
def test_each_rank_takes_its_local_gpu(local_rank, env, want):
    count = 1 if env.get("CUDA_VISIBLE_DEVICES") == "5" else 8
    choice = select_device("auto", local_rank, env=env, probe=gpus(count))
    assert str(choice.device) == want and not choice.fallback


def test_more_ranks_than_gpus_is_refused_not_stacked_on_gpu0():
    with pytest.raises(GPUUnavailableError, match="LOCAL_RANK=2 but only 2 GPU"):
        select_device("cuda", 2, env={}, probe=gpus(2))
    with pytest.raises(GPUUnavailableError, match="LOCAL_RANK=1 but only 1 GPU"):
        select_device("auto", 1, env={"CUDA_VISIBLE_DEVICES": "0,1"}, probe=gpus(1))


def test_explicit_index_and_cpu():
    assert str(select_device("cuda:1", 0, env={}, probe=gpus(2)).device) == "cuda:1"
    with pytest.raises(GPUUnavailableError, match="cuda:3"):
        select_device("cuda:3", 0, env={}, probe=gpus(2))
    # cpu on purpose: neither a GPU node's environment nor a broken CUDA stops it
    choice = select_device("cpu", 0, env={"CUDA_VISIBLE_DEVICES": "0", "SLURM_GPUS_ON_NODE": "8"}, probe=OLD_DRIVER)
    assert choice.device.type == "cpu" and not choice.fallback
    with pytest.raises(ValueError, match="gpu0"):
        select_device("gpu0", 0, env={}, probe=gpus(1))


@pytest.mark.parametrize("requested, env, backend, sign", [
    ("cuda", {}, "", "device='cuda' was asked for"),
    ("auto", {}, "nccl", "nccl backend"),
    ("auto", {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, "", "CUDA_VISIBLE_DEVICES=0,1,2,3"),
    ("auto", {"SLURM_GPUS_ON_NODE": "8"}, "", "SLURM allocated GPUs"),
    ("auto", {"SLURM_GPUS_PER_NODE": "h100:4"}, "", "SLURM allocated GPUs"),
])
def test_a_job_that_expects_gpus_stops_with_the_reason(requested, env, backend, sign):
    with pytest.raises(GPUUnavailableError) as err:
        select_device(requested, 0, env=env, backend=backend, probe=OLD_DRIVER)
    message = str(err.value)
    assert sign in message
    assert "built for CUDA 13.0" in message and "535.104.05" in message and "driver on your system is too old" in message
    with pytest.raises(GPUUnavailableError, match="CPU-only build"):
        select_device(requested, 0, env=env, backend=backend, probe=CPU_BUILD)


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"SLURM_GPUS_ON_NODE": "0"}])
def test_auto_without_any_sign_of_a_gpu_falls_back_loudly(env):
    # Ray sets CUDA_VISIBLE_DEVICES empty for work that reserved no GPU
    assert gpu_expectation("auto", env) is None
    choice = select_device("auto", 0, env=env, probe=CPU_BUILD)
    assert choice.device.type == "cpu" and choice.fallback and "CPU-only build" in choice.reason


def test_tf32_mode_restores_both_switches():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with tf32_mode(True):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32" == torch.backends.cudnn.conv.fp32_precision
        with tf32_mode(False):
            assert torch.backends.cuda.matmul.fp32_precision == "ieee" == torch.backends.cudnn.conv.fp32_precision
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
