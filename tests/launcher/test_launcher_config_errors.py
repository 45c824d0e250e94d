"""Config errors of every command that takes a config: one clear line on stderr, exit 2, no traceback."""

import subprocess
import sys

import pytest

from launcher.cli import main

# (command prefix, an integer field of that job's config)
COMMANDS = {
    "encode": (["encode"], "resolution"),
    "train": (["train"], "max_steps"),
    "sample": (["sample"], "num_samples"),
    "evaluate": (["evaluate"], "pr_k"),
    "submit-train": (["submit", "train"], "max_steps"),
    "submit-sample": (["submit", "sample"], "num_samples"),
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("{}\n")
    return str(path)


def _available(prefix):
    from launcher.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    if prefix[0] not in commands:
        pytest.skip(f"`lamamba {prefix[0]}` is not built yet")


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
    prefix, _ = COMMANDS[name]
    _available(prefix)
    _one_config_error(capsys, [*prefix, config_file, "no_such_key=1", *_runs_root(prefix, tmp_path)],
                      "no_such_key", config_file)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_wrong_type(name, config_file, capsys, tmp_path):
    prefix, int_key = COMMANDS[name]
    _available(prefix)
    _one_config_error(capsys, [*prefix, config_file, f"{int_key}=lots", *_runs_root(prefix, tmp_path)],
                      int_key, "lots")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_missing_file(name, capsys, tmp_path):
    prefix, _ = COMMANDS[name]
    _available(prefix)
    missing = str(tmp_path / "nope.yaml")
    _one_config_error(capsys, [*prefix, missing, *_runs_root(prefix, tmp_path)], missing)


def _runs_root(prefix, tmp_path):
    return ["--runs-root", str(tmp_path / "runs")] if prefix[0] == "submit" else []


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
