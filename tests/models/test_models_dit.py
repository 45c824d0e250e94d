"""The DiT baselines: sizes, FLOPs and parameters against the papers (meta device, no real XL
forward), DiT's initialisation and layout, and the model interface the jobs rely on."""

import json

import numpy as np
import pytest
import torch

from lamamba.config import ConfigError, from_dict, to_dict
from lamamba.models import DIT_PRESETS, DiT, ModelConfig, build_model
from lamamba.models.config import PAPER_FIGURES
from lamamba.models.flops import count_flops
from lamamba.models.io import load_model, save_model_weights
from launcher.cli import main

DIT_FIGURES = [(p, res, g) for p, f in PAPER_FIGURES.items() if p.startswith("DiT-") for res, g in f["gflops"].items()]


@pytest.mark.parametrize("preset,resolution,paper_gflops", DIT_FIGURES)
def test_dit_gflops_and_parameters_match_the_papers(preset, resolution, paper_gflops):
    counted = count_flops(ModelConfig(preset=preset, input_size=resolution // 8))
    assert counted["gflops"] == pytest.approx(paper_gflops, rel=0.005)
    # DiT's Table 4 rounds the parameters to the million; XL/2 is checked at 0.5 %
    paper_params = PAPER_FIGURES[preset]["params_m"] * 1e6
    assert counted["params"] == pytest.approx(paper_params, rel=0.005 if preset == "DiT-XL/2" else 0.01)


def test_registry_has_every_size_and_patch():
    for size in ("S", "B", "L", "XL"):
        for patch in (2, 4, 8):
            cfg = ModelConfig(preset=f"DiT-{size}/{patch}")
            assert cfg.backbone == "dit" and cfg.patch_size == patch and cfg.cond_dim == cfg.base_width
    assert ModelConfig(preset="DiT-XL/2").isotropic_depth == 28 and ModelConfig(preset="DiT-XL/2").base_width == 1152
    assert ModelConfig(preset="S").backbone == "lamamba" and ModelConfig(preset="S").patch_size == 1
    assert len(DIT_PRESETS) == 15  # four sizes and the tiny test size, three patch sizes each


def tiny(**changes) -> ModelConfig:
    return ModelConfig(preset="DiT-tiny/2", input_size=8, in_channels=1, num_classes=10, **changes)


def test_dit_init_is_adaln_zero_with_a_zero_final_layer():
    torch.manual_seed(0)
    model = build_model(tiny())
    assert isinstance(model, DiT)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    assert torch.equal(model(x, t, y), torch.zeros(3, 2, 8, 8))  # DiT's recipe: the output starts at zero
    for block in model.blocks:
        assert not block.adaLN_modulation[-1].weight.any() and not block.adaLN_modulation[-1].bias.any()
    release_like = build_model(tiny(zero_init_final=False))
    assert release_like(x, t, y).abs().sum() > 0


def test_positional_embedding_is_dits_and_not_stored():
    model = build_model(tiny())
    # DiT's get_2d_sincos_pos_embed (numpy), written out: first half from the column, second from the row.
    d, g = 64, 4
    omega = 1.0 / 10000 ** (np.arange(d // 4, dtype=np.float64) / (d / 4))
    cols, rows = np.meshgrid(np.arange(g), np.arange(g))

    def one(pos):
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    expected = np.concatenate([one(cols), one(rows)], axis=1)
    np.testing.assert_allclose(model.pos_embed.reshape(g * g, d).numpy(), expected, atol=1e-6)
    assert "pos_embed" not in model.state_dict()
    assert all(p.requires_grad for p in model.parameters())


def test_trains_with_checkpointing_and_label_drop():
    torch.manual_seed(0)
    cfg = tiny(zero_init_final=False)
    model = build_model(cfg)
    for block in model.blocks:  # leave the identity init so that every weight gets a gradient
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([4, 5])
    drop = torch.tensor([False, True])
    grads = []
    for policy in ("none", "all"):
        model.set_activation_checkpointing(policy)
        model.zero_grad()
        model(x, t, y, drop).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    assert grads[0]["y_embedder.table.weight"][10].abs().sum() > 0  # the dropped label used the null row
    assert grads[0]["y_embedder.table.weight"][5].abs().sum() == 0
    with pytest.raises(ValueError, match="DiT takes"):
        model.set_activation_checkpointing("enc0")


def test_config_round_trip_and_weights_file(tmp_path):
    cfg = tiny()
    again = from_dict(ModelConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    model = build_model(cfg)
    save_model_weights(str(tmp_path / "ema.safetensors"), model.state_dict(), cfg)
    loaded, loaded_cfg, _ = load_model(str(tmp_path / "ema.safetensors"))
    assert isinstance(loaded, DiT) and loaded_cfg == cfg
    # another resolution: the buffer follows, the weights load as they are
    bigger = build_model(cfg.replace(input_size=16))
    bigger.load_state_dict_resized(model.state_dict())
    assert bigger.pos_embed.shape == (1, 8, 8, 64)


@pytest.mark.parametrize("key,value", [("d_state", 4), ("attention", "none"), ("enc_depths", [1, 1])])
def test_lamamba_settings_on_a_dit_preset_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"{key}: a LaMamba-Diff setting"):
        from_dict(ModelConfig, {"preset": "DiT-S/2", key: value})
    with pytest.raises(ConfigError, match="preset: unknown 'DiT-S/3'"):
        from_dict(ModelConfig, {"preset": "DiT-S/3"})


def test_flops_command_takes_dit_presets(capsys):
    assert main(["flops", "--preset", "DiT-XL/2", "--resolution", "512", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "DiT-XL/2" and result["gflops"] == pytest.approx(524.6, rel=0.005)
