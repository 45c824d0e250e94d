"""Model tests run on one intra-op thread: their tensors are small, and on a shared, oversubscribed
CPU two OpenMP threads per op make them several times slower, not faster."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
