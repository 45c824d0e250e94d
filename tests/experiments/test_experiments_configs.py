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
