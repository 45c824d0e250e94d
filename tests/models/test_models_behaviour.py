"""LaMamba-Diff on the tiny preset: init, learning, conditioning, checkpointing, buffers, io."""

import pytest
import torch

from lamamba.config import ConfigError
from lamamba.models import ModelConfig, build_model
from lamamba.models.block import LaMambaBlock
from lamamba.models.io import load_model, save_model_weights


def tiny(**kw):
    return ModelConfig(**{"preset": "tiny", "input_size": 16, "in_channels": 1, "num_classes": 10, **kw})


def batch(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    y = torch.randint(0, cfg.num_classes, (b,), generator=g)
    return x, t, y


def test_output_shape_and_every_block_is_the_identity_at_init():
    torch.manual_seed(0)
    cfg = tiny()
    model = build_model(cfg)
    x, t, y = batch(cfg)
    assert model(x, t, y).shape == (2, 2, 16, 16)
    assert build_model(tiny(learn_sigma=False))(x, t, y).shape == (2, 1, 16, 16)
    c = torch.randn(2, cfg.cond_dim)
    blocks = [m for m in model.modules() if isinstance(m, LaMambaBlock)]
    assert len(blocks) == sum(cfg.enc_depths) + cfg.mid_depth + sum(cfg.dec_depths)
    for block in blocks:
        h = torch.randn(2, block.attn.resolution[0], block.attn.resolution[1], block.norm1.normalized_shape[0])
        assert torch.equal(block(h, c), h)


def test_after_one_step_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    cfg = tiny()
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, y = batch(cfg, b=4)
    drop = torch.tensor([False, False, True, False])  # the null row must learn too
    for step in range(2):
        opt.zero_grad()
        model(x, t, y, drop_mask=drop).square().mean().backward()
        if step == 0:
            opt.step()
    table = model.y_embedder.table.weight.grad
    for name, p in model.named_parameters():
        if name == "y_embedder.table.weight":
            used = torch.cat([y[~drop], torch.tensor([cfg.num_classes])])
            assert (table[used].abs().sum(1) > 0).all()
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_mask_forces_the_null_label():
    torch.manual_seed(0)
    cfg = tiny()
    model = build_model(cfg)
    for p in model.parameters():  # make the label matter (zero-init gates would hide it)
        p.data.add_(torch.randn_like(p) * 0.02)
    model.eval()
    x, t, y = batch(cfg)
    null = torch.full_like(y, cfg.num_classes)
    dropped = model(x, t, y, drop_mask=torch.tensor([True, False]))
    assert torch.allclose(dropped[0], model(x, t, null)[0], atol=1e-6)
    assert torch.allclose(dropped[1], model(x, t, y)[1], atol=1e-6)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = tiny()
    model = build_model(cfg)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    x, t, y = batch(cfg)
    grads = {}
    for policy in ("none", "all", "enc0,dec3"):
        model.set_activation_checkpointing(policy)
        model.zero_grad()
        model(x, t, y, drop_mask=torch.zeros(2, dtype=torch.bool)).square().mean().backward()
        grads[policy] = [p.grad.clone() for p in model.parameters()]
    for policy in ("all", "enc0,dec3"):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads["none"], grads[policy]))
    assert [b.checkpoint for b in model.stages["enc0"].blocks] == [True]
    assert not any(b.checkpoint for b in model.stages["mid"].blocks)
    with pytest.raises(ValueError, match="unknown stage"):
        model.set_activation_checkpointing("enc9")


def test_no_weight_decay_and_non_persistent_buffers():
    model = build_model(tiny())
    names = model.no_weight_decay()
    n_ss2d = sum(1 for m in model.modules() if isinstance(m, LaMambaBlock))
    assert len(names) == 2 * n_ss2d and all(n.endswith((".A_logs", ".Ds")) for n in names)
    buffers = {n for n, _ in model.named_buffers()}
    assert any(n.endswith("attn_mask") for n in buffers)  # 16 x 16 stage 0 has shifted windows
    assert not any(n.endswith(("attn_mask", "relative_position_index")) for n in model.state_dict())


def test_warm_start_at_another_resolution():
    torch.manual_seed(0)
    small = build_model(tiny(input_size=8))
    large = build_model(tiny(input_size=16))
    large.load_state_dict_resized(small.state_dict())
    assert large.pos_embed.shape == (1, 16, 16, 32)
    assert torch.equal(large.x_embedder.weight, small.x_embedder.weight)
    x, t, y = batch(large.cfg)
    assert torch.isfinite(large(x, t, y)).all()


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="input_size"):
        tiny(input_size=10)  # not divisible by 2^num_downsamples
    with pytest.raises(ValueError, match="window_size"):
        tiny(input_size=12 * 4)  # stage maps 48/24/12: 12 > 8 but not a multiple
    model = build_model(tiny())
    with pytest.raises(ValueError, match="expected input"):
        model(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("url", ["local", "memory://lamamba-test/ema.safetensors"])
def test_save_and_load_model_weights(tmp_path, url):
    torch.manual_seed(0)
    cfg = tiny(input_size=8, attention="global")
    model = build_model(cfg).eval()
    path = str(tmp_path / "ema.safetensors") if url == "local" else url
    save_model_weights(path, model.state_dict(), cfg, metadata={"step": 12, "note": "ema"})
    loaded, loaded_cfg, meta = load_model(path)
    assert loaded_cfg == cfg and meta == {"step": "12", "note": "ema"}
    x, t, y = batch(cfg)
    assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ConfigError, match="model_config"):
        load_model(str(path))
