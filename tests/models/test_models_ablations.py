"""Every ablation switch of the paper builds, trains a step, and changes the network as described."""

import pytest
import torch

from lamamba.models import ModelConfig, build_model
from lamamba.models.attention import WindowAttention
from lamamba.models.flops import count_flops

SWITCHES = [
    dict(attention="none"),
    dict(attention="window_noshift"),
    dict(attention="global"),
    dict(scan="raster"),
    dict(num_downsamples=1),
    dict(num_downsamples=3),
    dict(enc_depths=(2, 1, 0, 0), mid_depth=0),
    dict(architecture="isotropic", patch_size=1, isotropic_depth=2),
    dict(architecture="isotropic", patch_size=2, isotropic_depth=2),
    dict(architecture="isotropic", patch_size=4, isotropic_depth=2),
    dict(architecture="isotropic", patch_size=8, isotropic_depth=2),
    dict(skip="concat"),
    dict(zero_init_final=True),
    dict(scan_backend="reference"),
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_switch_builds_and_trains(switch):
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny", input_size=16, in_channels=1, num_classes=10, **switch)
    model = build_model(cfg).train()
    x = torch.randn(2, 1, 16, 16)
    out = model(x, torch.tensor([3, 900]), torch.tensor([1, 2]))
    assert out.shape == (2, 2, 16, 16)
    (out - 1).square().mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    if cfg.zero_init_final:
        assert torch.count_nonzero(model.final_layer.linear.weight) == 0
        assert torch.count_nonzero(out) == 0
    else:
        assert torch.count_nonzero(out) > 0  # the release's default: the final Linear is not zeroed


def attention_modules(cfg):
    return [m for m in build_model(cfg).modules() if isinstance(m, WindowAttention)]


def test_attention_switches_change_windows_and_shifts():
    base = dict(preset="tiny", input_size=32, in_channels=1)
    shifted = [m.shift for m in attention_modules(ModelConfig(**base))]
    assert 4 in shifted and 0 in shifted  # odd blocks of the 32 x 32 and 16 x 16 stages shift
    assert all(m.window == (8, 8) for m in attention_modules(ModelConfig(**base)) if m.resolution[0] >= 8)
    assert not any(m.shift for m in attention_modules(ModelConfig(**base, attention="window_noshift")))
    globals_ = attention_modules(ModelConfig(**base, attention="global"))
    assert all(m.window == m.resolution and not m.shift for m in globals_)
    assert not attention_modules(ModelConfig(**base, attention="none"))


def test_switches_move_the_flop_count_the_right_way():
    def gflops(**kw):
        return count_flops(ModelConfig(preset="tiny", input_size=32, **kw))["gflops"]

    def params(**kw):
        return count_flops(ModelConfig(preset="tiny", input_size=32, **kw))["params"]

    window = gflops()
    assert gflops(attention="none") < window < gflops(attention="global")
    assert gflops(attention="window_noshift") == window and gflops(scan="raster") == window
    assert params(num_downsamples=1) < params() < params(num_downsamples=3)  # widths d*2^min(i, n)
    assert gflops(skip="concat") > window
    iso = [gflops(architecture="isotropic", patch_size=p) for p in (1, 2, 4, 8)]
    assert iso == sorted(iso, reverse=True)


def test_default_decoder_depths_follow_the_encoder():
    cfg = ModelConfig(preset="tiny", enc_depths=(2, 1, 0, 3))
    assert cfg.dec_depths == (4, 0, 2, 3)  # reversed twins, one block more, none where none
