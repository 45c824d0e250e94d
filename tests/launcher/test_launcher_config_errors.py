"""Config errors of every command that takes a config: one clear line on stderr, exit 2, no traceback."""

import subprocess
import sys

import pytest

from launcher.cli import main

# name -> (argv before the config, an integer field of that command's config, argv after the overrides)
COMMANDS = {
    "encode": (["encode"], "resolution", []),
    "train": (["train"], "max_steps", []),
    "sample": (["sample"], "num_samples", []),
    "evaluate": (["evaluate"], "pr_k", []),
    "quickstart": (["quickstart", "--config"], "ray_cpus", []),
    "submit-train": (["submit", "train"], "max_steps", ["--runs-root", "{tmp}/runs"]),
    "submit-encode": (["submit", "encode"], "resolution", ["--runs-root", "{tmp}/runs", "--backend", "slurm"]),
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("{}\n")
    return str(path)


def _argv(name, config, overrides, tmp_path):
    before, _, after = COMMANDS[name]
    from launcher.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    if before[0] not in commands:
        pytest.skip(f"`lamamba {before[0]}` is not built yet")
    return [*before, config, *overrides, *(a.format(tmp=tmp_path) for a in after)]


def _one_config_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "config error" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_unknown_key(name, config_file, capsys, tmp_path):
    _one_config_error(capsys, _argv(name, config_file, ["no_such_key=1"], tmp_path), "no_such_key", config_file)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_wrong_type(name, config_file, capsys, tmp_path):
    int_key = COMMANDS[name][1]
    _one_config_error(capsys, _argv(name, config_file, [f"{int_key}=lots"], tmp_path), int_key, "lots")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_missing_file(name, capsys, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    _one_config_error(capsys, _argv(name, missing, [], tmp_path), missing)


def test_submit_refuses_run_dir_override(config_file, capsys, tmp_path):
    _one_config_error(capsys, ["submit", "train", config_file, "run_dir=/elsewhere"], "run_dir", "--runs-root")


def test_config_error_from_the_console_has_no_traceback(tmp_path):
    """The same through a real process: what a user sees."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: fast\n")
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "train", str(bad), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "optim.lr" in proc.stderr and "Traceback" not in proc.stderr


# (command, override, the dotted key the one line must name): values that used to be accepted and
# failed later (a division by zero after the first step, a traceback from DeepSpeed or a worker).
INVALID_VALUES = [
    ("train", "engine.micro_batch=-1", "engine.micro_batch"),
    ("train", "engine.device=gpu", "engine.device"),
    ("train", "engine.collective_timeout_s=0", "engine.collective_timeout_s"),
    ("train", "diffusion.steps=0", "diffusion.steps"),
    ("train", "diffusion.timestep_respacing=fast", "diffusion.timestep_respacing"),
    ("train", "optim.betas=[0.9,1.0]", "optim.betas"),
    ("train", "optim.betas=[-0.1,0.999]", "optim.betas"),
    ("train", "optim.eps=0", "optim.eps"),
    ("train", "data.num_workers=-1", "data.num_workers"),
    ("train", "preemption.signals=[SIGTERM,SIGNOPE]", "preemption.signals"),
    ("train", "preemption.signals=[SIGKILL]", "preemption.signals"),
    ("train", "monitor.log_every=0", "monitor.log_every"),
    ("train", "monitor.sample_count=0", "monitor.sample_count"),
    ("train", "numerics.max_consecutive_skips=0", "numerics.max_consecutive_skips"),
    ("submit-train", "monitor.log_every=0", "monitor.log_every"),
    ("encode", "ray.num_workers=-1", "ray.num_workers"),
    ("encode", "ray.cpus_per_worker=-1", "ray.cpus_per_worker"),
    ("sample", "steps=2000", "steps"),
    ("sample", "diffusion_steps=1", "diffusion_steps"),
    ("sample", "ray.num_workers=0", "ray.num_workers"),
    ("sample", "extractor.batch_size=0", "extractor.batch_size"),
    ("sample", "eta=-1", "eta"),
    ("evaluate", "pr_k=0", "pr_k"),
    ("evaluate", "is_split_size=0", "is_split_size"),
    ("quickstart", "train.monitor.log_every=0", "train.monitor.log_every"),
]


@pytest.mark.parametrize(("name", "override", "key"), INVALID_VALUES, ids=[f"{n}:{o}" for n, o, _ in INVALID_VALUES])
def test_invalid_value_is_refused_at_load_time(name, override, key, config_file, capsys, tmp_path):
    """Refused before any work (no run dir made) with one line naming the dotted key."""
    _one_config_error(capsys, _argv(name, config_file, [override], tmp_path), f"{key}:")
    assert not (tmp_path / "runs").exists()
