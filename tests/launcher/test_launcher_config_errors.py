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
