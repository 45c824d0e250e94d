"""The trainer resolves the scan backend before it builds anything and records the choice."""

import json

import pytest
import torch

from lamamba.models import ModelConfig
from lamamba.ops import ScanBackendError
from lamamba.training.distributed import World
from lamamba.training.trainer import record_scan_backend


def test_the_choice_is_recorded_in_the_run(tmp_path):
    record_scan_backend(str(tmp_path), World(0, 1, 0, torch.device("cpu")), ModelConfig(preset="tiny"))
    record = json.loads((tmp_path / "scan_backend.json").read_text())
    assert record == {"requested": "auto", "backend": "torch", "reason": "tensors on cpu: the torch scan",
                      "device": "cpu", "d_state": 2}


def test_a_backend_that_cannot_run_stops_every_rank_before_the_build(tmp_path):
    cfg = ModelConfig(preset="tiny", scan_backend="mamba_ssm")
    with pytest.raises(ScanBackendError, match="needs CUDA tensors"):
        record_scan_backend(str(tmp_path), World(1, 2, 1, torch.device("cpu")), cfg)  # not only rank 0
    assert not (tmp_path / "scan_backend.json").exists()


def test_dit_has_no_scan(tmp_path):
    record_scan_backend(str(tmp_path), World(0, 1, 0, torch.device("cpu")), ModelConfig(preset="DiT-S/2"))
    assert not (tmp_path / "scan_backend.json").exists()
