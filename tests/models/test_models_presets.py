"""Every preset builds and trains a step on CPU at batch 1; FLOPs and parameters match the paper.

L and XL-release at 256 px and S at 512 / 1024 px take tens of seconds and several GB on CPU: they
are marked ``slow``; XL's forward and backward run on the meta device (tests/gpu), and every
preset's structure is checked through the FLOP count, which runs the same forward there.
"""

import json

import pytest
import torch

from lamamba.models import ModelConfig, build_model
from lamamba.models.config import PAPER_FIGURES
from lamamba.models.flops import count_flops
from lamamba.ops import selective_scan as real_selective_scan


def train_step(cfg: ModelConfig, autocast_dtype=None) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = torch.randn(1, cfg.in_channels, cfg.input_size, cfg.input_size)
    t, y = torch.tensor([500]), torch.tensor([7])
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(x, t, y)
    loss = out.float().square().mean()
    loss.backward()
    assert out.shape == (1, cfg.out_channels, cfg.input_size, cfg.input_size)
    assert torch.isfinite(out).all() and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize("preset", ["S", "B"])
def test_preset_forward_backward_at_256(preset):
    train_step(ModelConfig(preset=preset, input_size=32))


# XL differs from L only in widths and depth (both N = 16): its forward and backward at 256 px run
# on the meta device (tests/gpu/test_gpu_meta_device.py), where it costs seconds, not a minute.
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["L", "XL-release"])
def test_large_preset_forward_backward_at_256(preset):
    train_step(ModelConfig(preset=preset, input_size=32))


@pytest.mark.slow
@pytest.mark.parametrize("latent", [64, 128])
def test_s_forward_backward_at_512_and_1024(latent):
    train_step(ModelConfig(preset="S", input_size=latent))


def test_s_bf16_autocast_keeps_the_scan_in_float32(monkeypatch):
    dtypes = set()

    def recording_scan(u, delta, A, B, C, *args, **kwargs):
        dtypes.update(t.dtype for t in (u, delta, A, B, C))
        return real_selective_scan(u, delta, A, B, C, *args, **kwargs)

    monkeypatch.setattr("lamamba.models.ss2d.selective_scan", recording_scan)
    out = train_step(ModelConfig(preset="S", input_size=32), autocast_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert dtypes == {torch.float32}


@pytest.mark.parametrize("preset", ["S", "B", "L", "XL"])
def test_table1_params_and_gflops_at_256(preset):
    counted = count_flops(ModelConfig(preset=preset, input_size=32))
    paper = PAPER_FIGURES[preset]
    gflops = paper.get("table1_gflops", paper["gflops"][256])
    assert abs(counted["gflops"] / gflops - 1) < 0.015
    assert abs(counted["params"] / 1e6 / paper["params_m"] - 1) < 0.07


@pytest.mark.parametrize("preset", ["XL", "XL-release"])
@pytest.mark.parametrize("resolution", [256, 512, 1024])
def test_xl_gflops_at_every_resolution(preset, resolution):
    counted = count_flops(ModelConfig(preset=preset, input_size=resolution // 8))
    assert abs(counted["gflops"] / PAPER_FIGURES[preset]["gflops"][resolution] - 1) < 0.005
    if preset == "XL-release":
        assert abs(counted["params"] / 652.5e6 - 1) < 0.01  # the released checkpoint's size


def test_flops_command_json(capsys):
    from launcher.cli import main

    assert main(["flops", "--preset", "XL", "--resolution", "256", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"preset", "resolution", "params", "gflops"}
    assert result["preset"] == "XL" and result["resolution"] == 256
    assert abs(result["gflops"] - 50.46) < 0.05
    assert main(["flops", "--table"]) == 0
    table = capsys.readouterr().out
    assert all(preset in table for preset in PAPER_FIGURES)
    assert main(["flops", "--preset", "S", "--set", "no_such_key=1"]) == 2
