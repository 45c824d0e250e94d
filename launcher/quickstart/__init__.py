"""`lamamba quickstart`: the whole system end to end on scikit-learn's handwritten digits, CPU only.

``run_quickstart(load_quickstart_config(None, ["run_dir=runs/qs"]))`` trains a digit classifier,
encodes the digits with the Ray job, trains a small LaMamba-Diff with DeepSpeed under torchrun,
samples class-balanced images, evaluates them, and writes a sample grid, a metrics JSON and
TensorBoard logs under ``run_dir``.
"""

from launcher.quickstart.config import QuickstartConfig, load_quickstart_config
from launcher.quickstart.pipeline import run_quickstart

__all__ = ["QuickstartConfig", "load_quickstart_config", "run_quickstart"]
