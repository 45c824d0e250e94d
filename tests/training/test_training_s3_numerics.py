"""A diverging run with its checkpoints on S3 (moto server): non-finite steps are skipped and
counted, K in a row stop the run (exit 3) with the last good checkpoint committed on S3, and a
relaunch resumes from S3."""

import pytest
import torch
from safetensors.torch import load

from lamamba import storage
from training_helpers import launch, output, wait

BUCKET = "lamamba-ckpt"


@pytest.fixture()
def s3_options(s3_server):
    return s3_server.bucket(BUCKET)


def test_diverging_run_stops_with_last_good_checkpoint_on_s3(tmp_path, digits_manifest, s3_options):
    url = f"s3://{BUCKET}/run/checkpoints"
    overrides = [f"checkpoint.dir={url}", *(f"checkpoint.storage_options.{k}={v}" for k, v in s3_options.items()),
                 # lr 1e30: step 1 is applied and throws the weights to ~1e30, so every later
                 # forward overflows; those steps are skipped until the guard stops the run.
                 "optim.lr=1.0e+30", "optim.grad_clip=0", "checkpoint.every_steps=1", "numerics.max_consecutive_skips=2",
                 "monitor.sample_every=0"]
    run_dir = tmp_path / "run"
    rc = wait(launch(run_dir, digits_manifest, 1, *overrides), run_dir)
    log = output(run_dir)
    assert rc == 3, log[-3000:]
    assert "2 consecutive steps with a non-finite loss or gradient norm" in log
    assert "step 2 skipped" in log
    fs, root = storage.filesystem(url, s3_options)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, refresh=True))
    assert names == ["step_00000001", "step_00000002"]  # step 3 (the second skip) raised first
    for name in names:
        assert fs.exists(f"{root}/{name}/COMMITTED")
        weights = load(fs.cat_file(f"{root}/{name}/consolidated.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())
    assert "<redacted>" in (run_dir / "config.yaml").read_text()

    rc = wait(launch(run_dir, digits_manifest, 1, *overrides), run_dir)
    assert rc == 3
    assert f"resumed from {url}/step_00000002: step 2" in output(run_dir)
