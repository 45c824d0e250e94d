"""A non-editable install (what a container image gets): build a wheel, install it into a fresh venv
outside the checkout, run `lamamba flops` and two training steps from there.

Before the DeepSpeed JSONs and the quickstart config were package data they were found through the
source tree (``parents[2]``), so an installed wheel could not start a training run. The venv reuses
the test interpreter's installed dependencies through a path file (a plain path line: that
directory's own .pth files, such as an editable install of this checkout, are not run), so
``lamamba`` itself can only come from the wheel.
"""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("lamamba", "launcher", "data_pipeline", "cluster", "pyproject.toml", "README.md")


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_trains(tmp_path, digits_manifest):
    src = tmp_path / "src"  # a copy, so that building leaves no build/ or egg-info in the checkout
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp_path / "dist"), str(src)], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("lamamba-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        tmp_path, env).strip())
    deps = sysconfig.get_path("purelib")
    (purelib / "test-deps.pth").write_text(deps + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
         tmp_path, env)

    where = _run([str(python), "-c", "import lamamba, launcher; print(lamamba.__file__, launcher.__file__)"],
                 tmp_path, env)
    assert all(path.startswith(str(purelib)) for path in where.split()), where
    lamamba = str(venv / "bin" / "lamamba")
    assert "S at 256 px" in _run([lamamba, "flops", "--preset", "S"], tmp_path, env)
    # the quickstart's default config ships in the package
    _run([str(python), "-c", "from launcher.quickstart.config import DEFAULT_CONFIG, load_quickstart_config; "
          "assert DEFAULT_CONFIG.is_file(); load_quickstart_config(None, [])"], tmp_path, env)

    run_dir = tmp_path / "run"
    _run([lamamba, "train", str(REPO / "configs/train/tiny_digits.yaml"), f"run_dir={run_dir}",
          f"data.manifest={digits_manifest}", "max_steps=2", "monitor.sample_every=0"], tmp_path, env)
    assert (run_dir / "checkpoints" / "step_00000002").is_dir()
