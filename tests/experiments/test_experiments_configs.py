"""The experiment jobs' configs and command line (fast: nothing is sampled or trained)."""

import glob

import pytest

from lamamba.config import ConfigError, load_config
from lamamba.experiments.config import EvalSweepConfig
from lamamba.experiments.eval_sweep import Point, run_label, sweep_points
from lamamba.experiments.config import SweepSampler
from launcher.cli import main


@pytest.mark.parametrize("path", sorted(glob.glob("configs/evaluate_sweep/*.yaml")))
def test_shipped_sweep_configs_load(path):
    cfg = load_config(EvalSweepConfig, path, ["train_run=runs/x"])
    assert cfg.guidance_scales and cfg.samplers


def test_points_from_explicit_checkpoints_and_their_names(tmp_path):
    cfg = load_config(EvalSweepConfig, None, [f"checkpoints=[{tmp_path}/a/step_00000100, {tmp_path}/export.safetensors]",
                                              "guidance_scales=[1.0, 1.5]", "label=mine",
                                              "samplers=[{sampler: ddim, steps: 50}, {sampler: ddpm, steps: 250}]"])
    points = sweep_points(cfg)
    assert len(points) == 8 and {p.label for p in points} == {"mine"}
    assert points[0] == Point("mine", f"{tmp_path}/a/step_00000100", 100, 1.0, SweepSampler("ddim", 50))
    assert points[0].name == "step00000100_cfg1_ddim50" and points[4].name == "export.safetensors_cfg1_ddim50"
    assert points[4].step is None
    assert run_label(load_config(EvalSweepConfig, None, ["train_run=runs/xl-256/checkpoints/"])) == "xl-256"


@pytest.mark.parametrize("override,key", [("guidance_scales=[0.5]", "guidance_scales"), ("samplers=[]", "samplers"),
                                          ("evaluate.out=x.json", "evaluate.samples"),
                                          ("samplers=[{sampler: ddim, steps: 0}]", "steps"),
                                          ("guidance_scale=[2]", "guidance_scale")])
def test_bad_sweep_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(EvalSweepConfig, None, [override])


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["evaluate-sweep", "guidance_scales=[0.2]", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamamba evaluate-sweep: config error: guidance_scales") and "\n" not in err
    assert main(["evaluate-sweep", f"run_dir={tmp_path}"]) == 2
    assert "give a training run or a list of checkpoints" in capsys.readouterr().err


def test_shipped_scaling_config_loads_and_wires_the_warm_starts():
    from launcher.scaling import load_scaling_config, training_overrides

    cfg = load_scaling_config("configs/scaling/paper_comparison.yaml", ["submit.runs_root=/r"])
    by_name = {r.name: r for r in cfg.runs}
    assert training_overrides(cfg, by_name["dit-xl2-256"])[-1] == "model.input_size=32"
    warm = training_overrides(cfg, by_name["lamamba-xl-512"])
    assert "model.input_size=64" in warm and warm[-1] == "init_from=/r/lamamba-xl-256"
    with pytest.raises(ConfigError, match="names must be unique"):
        load_scaling_config("configs/scaling/paper_comparison.yaml", ["runs=[{name: a, config: x}, {name: a, config: y}]"])
    with pytest.raises(ConfigError, match="not divisible by latent_downsample"):
        load_scaling_config(None, ["runs=[{name: a, config: x, resolution: 100}]"])


def test_scaling_submit_dry_run_renders_every_run(tmp_path, capsys):
    assert main(["scaling-sweep", "configs/scaling/paper_comparison.yaml", "submit", f"submit.runs_root={tmp_path}",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would submit") == 4 and "#SBATCH --nodes=4" in out and "--job-name=dit-xl2-512" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_warm_start_interpolates_the_positions_and_refuses_another_architecture(tmp_path):
    import torch

    from lamamba.models import ModelConfig, build_model
    from lamamba.models.embeddings import resize_pos_embed
    from lamamba.models.io import save_model_weights
    from lamamba.training.trainer import warm_start

    small = ModelConfig(preset="tiny", input_size=8, in_channels=1, num_classes=10)
    source = build_model(small)
    with torch.no_grad():
        source.pos_embed.normal_()
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    save_model_weights(str(ckpt / "ema.safetensors"), source.state_dict(), small)
    (ckpt / "COMMITTED").write_text("")
    large_cfg = small.replace(input_size=16)
    large = build_model(large_cfg)
    warm_start(large, large_cfg, str(tmp_path / "run"))  # a run dir: its newest committed checkpoint
    torch.testing.assert_close(large.pos_embed, resize_pos_embed(source.pos_embed.detach(), 16))
    torch.testing.assert_close(large.final_layer.linear.weight, source.final_layer.linear.weight)
    dit_cfg = ModelConfig(preset="DiT-tiny/2", input_size=16, in_channels=1, num_classes=10)
    with pytest.raises(ConfigError, match="different architecture.*preset"):
        warm_start(build_model(dit_cfg), dit_cfg, str(ckpt))
