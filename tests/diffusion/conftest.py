"""One intra-op thread for the diffusion tests: on a shared 2-core machine, torch's thread pool
spin-waits against the other processes and runs these small tensors 10-25x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
