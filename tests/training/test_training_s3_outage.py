"""Checkpoint uploads while the S3 endpoint goes away (a TCP proxy in front of the moto server
that resets every connection): failed saves are retried with backoff and never committed,
training goes on until checkpoint.upload_budget_s is spent, then the run stops with one line
(exit 4); with the endpoint back, the same command resumes from the last commit."""

import re

import pytest

from lamamba import storage
from training_helpers import launch, losses, output, wait, wait_for

BUCKET = "ckpt-outage"


@pytest.mark.slow  # two launches and an outage that must outlast the budget: about 2 minutes when quiet
@pytest.mark.timeout(1200)
def test_s3_outage_during_saves_keeps_training_then_stops_and_resume_continues(tmp_path, digits_manifest, s3_server,
                                                                                outage_proxy, monkeypatch):
    options = s3_server.bucket(BUCKET)
    host, port = s3_server.endpoint.rsplit("/", 1)[-1].split(":")
    proxy = outage_proxy((host, int(port)))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: lamamba's are under test
    url = f"s3://{BUCKET}/run/checkpoints"
    overrides = [f"checkpoint.dir={url}",
                 *(f"checkpoint.storage_options.{k}={v}" for k, v in {**options, "endpoint_url": proxy.endpoint}.items()),
                 "checkpoint.every_steps=1", "checkpoint.upload_budget_s=12", "checkpoint.lease_ttl_s=3",
                 "monitor.sample_every=0", "max_steps=6"]
    fs, root = storage.filesystem(url, options)  # straight to the server, not through the proxy

    def committed() -> list[str]:
        fs.invalidate_cache()
        return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, refresh=True) if fs.exists(f"{p}/COMMITTED"))

    run_dir = tmp_path / "run"
    proc = launch(run_dir, digits_manifest, 1, *overrides)
    wait_for(lambda: fs.exists(f"{root}/step_00000001/COMMITTED"), proc, run_dir, timeout=600, what="the first commit")
    proxy.go_away()
    rc = wait(proc, run_dir, timeout=600)
    log = output(run_dir)
    assert rc == 4, log[-3000:]
    assert "retry 1 in" in log and "training goes on and the next save retries" in log
    failed = int(re.search(r"checkpoint \S+/step_(\d+) not committed: .*training goes on", log).group(1))
    stop = re.findall(r"lamamba train: checkpoint \S+/step_(\d+) not committed: .*checkpoint uploads have failed "
                      r"for \d+ s \(checkpoint.upload_budget_s=12\); the newest committed checkpoint is "
                      rf"{url}/step_00000001\n", log)
    assert len(stop) == 1 and int(stop[0]) > failed  # trained on after the failed save, then one line
    assert max(losses(run_dir)) == int(stop[0])
    assert committed() == ["step_00000001"]  # no half-uploaded checkpoint looks committed

    proxy.come_back()
    rc = wait(launch(run_dir, digits_manifest, 1, *overrides, "max_steps=3"), run_dir, timeout=600)
    log = output(run_dir)
    assert rc == 0, log[-3000:]
    assert f"resumed from {url}/step_00000001: step 1" in log
    assert committed() == ["step_00000002", "step_00000003"]  # keep_last 2
