"""The ZeRO-2 / ZeRO-3 reference training runs of 4 steps (configs/train/tiny_digits.yaml on the
digits set) that several test modules read: DeepSpeed start-ups are the suite's main cost."""

import pytest


@pytest.fixture(scope="session")
def reference_z2(tmp_path_factory, digits_manifest):
    from training_helpers import run

    run_dir = tmp_path_factory.mktemp("ref-z2") / "run"
    run(run_dir, digits_manifest, 2, "engine.zero_stage=2")
    return run_dir


@pytest.fixture(scope="session")
def reference_z3(tmp_path_factory, digits_manifest):
    from training_helpers import run

    run_dir = tmp_path_factory.mktemp("ref-z3") / "run"
    run(run_dir, digits_manifest, 2, "engine.zero_stage=3")
    return run_dir
