"""Fixtures of the launcher tests: fake cluster tools (sbatch, kubectl, ...) on PATH; the digits
encoded as identity latents by the encode job, for the tests that train."""

import os
import stat

import pytest

# Records its arguments in $FAKE_DIR/calls.log, prints $FAKE_DIR/<tool>.out, exits with the code
# in $FAKE_DIR/<tool>.rc (0 if absent).
FAKE_TOOL = """#!/bin/sh
tool=$(basename "$0")
echo "$tool $*" >> "$FAKE_DIR/calls.log"
[ -f "$FAKE_DIR/$tool.out" ] && cat "$FAKE_DIR/$tool.out"
[ -f "$FAKE_DIR/$tool.rc" ] && exit "$(cat "$FAKE_DIR/$tool.rc")"
exit 0
"""


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """``install({"sbatch": None, "srun": BODY})`` puts fake tools first on PATH (None = FAKE_TOOL);
    returns (the folder of their .out/.rc files, a function listing the recorded calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))

    def install(tools):
        for name, body in tools.items():
            path = bin_dir / name
            path.write_text(body or FAKE_TOOL)
            path.chmod(path.stat().st_mode | stat.S_IEXEC)

    def calls():
        log = tmp_path / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    return install, tmp_path, calls


@pytest.fixture(scope="session")
def digits_latents(tmp_path_factory):
    from data_pipeline import EncodeConfig, run_encode
    from lamamba.config import load_config

    run_dir = tmp_path_factory.mktemp("encode")
    cfg = load_config(EncodeConfig, None, [f"run_dir={run_dir}", "source.kind=digits", "autoencoder.kind=identity",
                                           "autoencoder.image_channels=1", "resolution=8", "ray.num_workers=0"])
    return run_encode(cfg).manifest_url
