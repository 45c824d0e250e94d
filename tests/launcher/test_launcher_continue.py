"""Continuing a run: what may change between two submissions of one run, what is refused, and
credentials that never reach a file or the run id (SLURM backend with fake tools; training for real)."""

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from launcher import runs
from launcher.cli import main

REPO = Path(__file__).resolve().parents[2]

# sbatch that also records what the job's environment would carry.
FAKE_SBATCH = """#!/bin/sh
echo "sbatch $*" >> "$FAKE_DIR/calls.log"
printf '%s' "$LAMAMBA_CONFIG_SECRETS" > "$FAKE_DIR/job-env-secrets"
echo "4242;cluster1"
"""


@pytest.fixture
def slurm(fake_tools, tmp_path):
    install, fake_dir, calls = fake_tools
    install({"sbatch": FAKE_SBATCH, "squeue": None, "sacct": None})
    config = tmp_path / "digits.yaml"
    config.write_text("source: {kind: digits}\nautoencoder: {kind: identity, image_channels: 1}\nresolution: 8\n")
    root = str(tmp_path / "runs")

    def submit(*args):
        return main(["submit", "encode", str(config), *args, "--backend", "slurm", "--gpus-per-node", "0",
                     "--runs-root", root])
    return submit, root, fake_dir


def _run_id(capsys):
    return capsys.readouterr().out.split()[1]


def test_continuation_keys_keep_the_run_identity_keys_are_refused(slurm, capsys):
    submit, root, _ = slurm
    assert submit() == 0
    first = _run_id(capsys)
    # The fan-out is no part of the data set: the same run continues.
    assert submit("ray.num_workers=7", "verify_checksums=true") == 0
    out = capsys.readouterr().out
    assert f"submitted {first} to slurm (submission 2: continuing" in out
    assert "num_workers: 7" in (Path(root) / first / "launch" / "config.yaml").read_text()

    # Another shard size is another data set: refused with the key named, nothing written.
    assert submit("shard_size=100") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard_size" in err and "--new-run" in err and first in err
    assert [r.run_id for r in runs.list_runs(root)] == [first]

    # Asked for: a new run beside the first.
    assert submit("shard_size=100", "--new-run") == 0
    second = _run_id(capsys)
    assert second != first and second.rsplit("-", 1)[0] == first.rsplit("-", 1)[0]
    assert sorted(r.run_id for r in runs.list_runs(root)) == sorted([first, second])
    # ... which then continues like any run (the newest of the config file's runs is compared).
    assert submit("shard_size=100") == 0
    assert f"submitted {second} to slurm (submission 2" in capsys.readouterr().out


def test_a_named_run_with_other_identity_is_refused(slurm, capsys):
    submit, root, _ = slurm
    assert submit("--run-id", "mine") == 0
    capsys.readouterr()
    assert submit("resolution=16", "--run-id", "mine") == 1
    err = capsys.readouterr().err
    assert "resolution" in err and "another --run-id" in err
    assert submit("resolution=16", "--run-id", "mine", "--new-run") == 1  # never into the same dir
    assert "resolution" in capsys.readouterr().err


def test_credentials_reach_the_job_environment_only_and_rotating_keeps_the_run(slurm, capsys):
    submit, root, fake_dir = slurm
    secret, rotated = f"SECRET-{uuid.uuid4().hex}", f"ROTATED-{uuid.uuid4().hex}"
    assert submit(f"storage_options.secret={secret}", "storage_options.endpoint_url=http://127.0.0.1:1") == 0
    run_id = _run_id(capsys)
    assert json.loads((fake_dir / "job-env-secrets").read_text()) == {
        "EncodeConfig": {"storage_options.secret": secret}}
    assert submit(f"storage_options.secret={rotated}", "storage_options.endpoint_url=http://127.0.0.1:2") == 0
    assert f"submitted {run_id} to slurm (submission 2" in capsys.readouterr().out
    assert rotated in (fake_dir / "job-env-secrets").read_text()
    assert main(["status", run_id, "--runs-root", root, "--json"]) == 0
    shown = capsys.readouterr().out
    for value in (secret, rotated):
        assert value not in shown
        for path in Path(root).rglob("*"):
            assert not path.is_file() or value.encode() not in path.read_bytes(), path
    saved = (Path(root) / run_id / "launch" / "config.yaml").read_text()
    assert "secret" not in saved and "endpoint_url: http://127.0.0.1:2" in saved


def test_credentials_are_not_sent_to_a_ray_cluster(tmp_path, capsys):
    config = tmp_path / "digits.yaml"
    config.write_text("source: {kind: digits}\n")
    assert main(["submit", "encode", str(config), "storage_options.key=AKIDXYZ", "--backend", "ray",
                 "--address", "http://127.0.0.1:1", "--runs-root", str(tmp_path / "runs"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "storage_options.key" in err and "AKIDXYZ" not in err and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_training_run_with_s3_credentials_writes_them_nowhere(digits_latents, s3_server, tmp_path, monkeypatch,
                                                                 capsys):
    """A real run: checkpoints on S3 with credentials given in the config only (none in the
    environment, so the run works only if they reach its processes), a distinctive secret grepped
    across the run dir, the bucket, the logs and status; a rotated key continues the same run."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "LAMAMBA_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("LAMAMBA_DATA_CACHE", str(tmp_path / "cache"))
    bucket = f"creds-{uuid.uuid4().hex[:8]}"
    s3_server.bucket(bucket)
    root = str(tmp_path / "runs")
    secrets = [f"SECRET-{uuid.uuid4().hex}", f"ROTATED-{uuid.uuid4().hex}"]
    key = f"AKID{uuid.uuid4().hex[:12].upper()}"

    def submit(secret, steps):
        return main(["submit", "train", str(REPO / "configs/train/tiny_digits.yaml"), f"data.manifest={digits_latents}",
                     f"max_steps={steps}", "monitor.sample_every=1000", "engine.activation_checkpointing=none",
                     f"checkpoint.dir=s3://{bucket}/ckpt", f"checkpoint.storage_options.endpoint_url={s3_server.endpoint}",
                     f"checkpoint.storage_options.key={key}", f"checkpoint.storage_options.secret={secret}",
                     "--backend", "local", "--gpus-per-node", "1", "--runs-root", root, "--python", sys.executable,
                     "--follow"])

    assert submit(secrets[0], 2) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    run_id = out.split()[1]
    assert f"{run_id}: SUCCEEDED" in out
    assert submit(secrets[1], 4) == 0  # the key rotated, the run longer: the same run continues
    out = capsys.readouterr().out
    assert f"submitted {run_id} to local (submission 2" in out
    assert f"resumed from s3://{bucket}/ckpt/step_00000002" in out and "finished: 4 steps" in out

    for args in (["status", run_id, "--json"], ["logs", run_id]):
        assert main([*args, "--runs-root", root]) == 0
    shown = capsys.readouterr().out
    from lamamba import storage

    fs, _ = storage.filesystem(f"s3://{bucket}", dict(s3_server.options))
    objects = [fs.cat_file(p) for p in fs.find(bucket)]
    assert any(p.endswith("COMMITTED") for p in fs.find(bucket))
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in files)  # TensorBoard is among what is searched
    for value in (*secrets, key):
        assert value not in out and value not in shown
        for path in files:
            assert value.encode() not in path.read_bytes(), path
        for blob in objects:
            assert value.encode() not in blob
    assert os.environ.get("LAMAMBA_CONFIG_SECRETS") is None
