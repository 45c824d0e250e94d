"""Typed configs: YAML + dotted overrides, with errors that name the key."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from lamamba.config import ConfigError, config_hash, load_config, save_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Job:
    name: str = "run"
    steps: int = 10
    mode: Literal["fast", "exact"] = "exact"
    tags: list[str] = field(default_factory=list)
    resume: Optional[str] = None
    optim: Optim = field(default_factory=Optim)


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_the_tree(tmp_path):
    path = write(tmp_path, "steps: 5\noptim:\n  lr: 2.0e-4\n")
    cfg = load_config(Job, path, ["optim.betas=[0.5, 0.9]", "tags=[a, b]", "mode=fast", "resume=ckpt"])
    assert cfg.steps == 5 and cfg.optim.lr == 2e-4 and cfg.optim.betas == (0.5, 0.9)
    assert cfg.tags == ["a", "b"] and cfg.mode == "fast" and cfg.resume == "ckpt"


def test_exponent_without_a_dot_is_a_float(tmp_path):
    # YAML 1.1 reads "1e-3" as a string; a float field still takes it.
    cfg = load_config(Job, write(tmp_path, "optim:\n  lr: 1e-3\n"), ["optim.lr=1e30"])
    assert cfg.optim.lr == 1e30


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key optim.lrr"),
    ("steps=ten", "steps: expected an integer"),
    ("mode=slow", "mode: 'slow' is not one of"),
    ("optim.betas=[1]", "optim.betas: expected 2 items"),
    ("steps", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Job, None, [override])


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Job, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="job.yaml: the top level must be a mapping"):
        load_config(Job, write(tmp_path, "- 1\n- 2\n"))


def test_saved_config_round_trips_with_the_same_hash(tmp_path):
    cfg = load_config(Job, None, ["optim.lr=3e-4", "tags=[x]"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Job, tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(cfg) and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Job, None, ["steps=11"])) != config_hash(cfg)
