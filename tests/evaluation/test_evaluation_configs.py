"""Every shipped sample/evaluate config loads, and the CLI flags map onto config keys."""

from pathlib import Path

import pytest

from launcher.cli import build_parser
from launcher.commands.sample import FLAGS, config_and_overrides
from lamamba.config import load_config
from lamamba.evaluation.config import EvalConfig, SampleConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sample"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cls = EvalConfig if path.name.startswith("eval_") else SampleConfig
    cfg = load_config(cls, path)
    if cls is SampleConfig and path.name.startswith("imagenet_"):
        assert (cfg.num_samples, cfg.steps, cfg.cfg_scale, cfg.sampler) == (50000, 250, 1.5, "ddpm")
        assert cfg.guided_channels is None  # all 4 channels, the LaMamba-Diff release


def test_sample_flags_become_overrides():
    args = build_parser().parse_args(["sample", "checkpoint=/x.safetensors", "seed=3", "--num-samples", "100",
                                      "--cfg-scale", "4.0", "--sampler", "ddim", "--out", "s3://b/s"])
    path, overrides = config_and_overrides(args, FLAGS)
    assert path is None
    cfg = load_config(SampleConfig, path, overrides)
    assert (cfg.checkpoint, cfg.seed, cfg.num_samples, cfg.cfg_scale, cfg.sampler, cfg.out) == \
        ("/x.safetensors", 3, 100, 4.0, "ddim", "s3://b/s")


def test_bad_values_name_the_key():
    from lamamba.config import ConfigError

    with pytest.raises(ConfigError, match="cfg_scale"):
        load_config(SampleConfig, None, ["cfg_scale=0.5"])
    with pytest.raises(ConfigError, match="sampler"):
        load_config(SampleConfig, None, ["sampler=euler"])


def test_cli_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    from launcher.cli import main

    assert main(["sample", f"checkpoint={tmp_path / 'none.safetensors'}", f"run_dir={tmp_path}"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--samples", str(tmp_path), f"run_dir={tmp_path}"]) == 2  # no reference
    assert "reference" in capsys.readouterr().err
    assert main(["evaluate", "--samples", str(tmp_path), "--reference", str(tmp_path / "r.npz"),
                 f"run_dir={tmp_path}", "extractor.kind=evaluation_fakes:build"]) == 2  # no shards: bad input
    assert "no finished shards" in capsys.readouterr().err


def test_auto_launcher_follows_the_environment(monkeypatch):
    from lamamba.evaluation.sampler import resolve_launcher

    for var in ("WORLD_SIZE", "RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a shell set up for `lamamba submit`
    assert resolve_launcher("auto") == "local"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # a Ray job's driver
    assert resolve_launcher("auto") == "ray"
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_launcher("auto") == "torchrun"
    assert resolve_launcher("local") == "local"
