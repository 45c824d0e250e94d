"""Bad data given to `lamamba train`: one line naming it, exit code 2, no traceback, before any step."""

import shutil
import subprocess
import sys
from pathlib import Path

from training_helpers import CONFIG, REPO


def _train(tmp_path: Path, manifest: str) -> subprocess.CompletedProcess:
    env_cache = f"LAMAMBA_DATA_CACHE={tmp_path / 'cache'}"
    cmd = ["env", env_cache, f"PYTHONPATH={REPO}", "OMP_NUM_THREADS=1", sys.executable, "-m", "launcher.cli",
           "train", str(CONFIG), f"run_dir={tmp_path / 'run'}", f"data.manifest={manifest}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lamamba train:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_missing_manifest(tmp_path):
    missing = tmp_path / "nowhere" / "manifest.json"
    _one_line(_train(tmp_path, str(missing)), "data.manifest", str(missing))


def test_damaged_shard_is_named(tmp_path, digits_manifest):
    data = tmp_path / "latents"
    shutil.copytree(Path(digits_manifest).parent, data)
    shard = sorted(data.glob("shard-*.tar"))[0]
    with open(shard, "r+b") as f:  # same size, other bytes: only the checksum can tell
        f.seek(1000)
        f.write(b"\xff" * 64)
    _one_line(_train(tmp_path, str(data / "manifest.json")), "data.manifest", shard.name)
