"""Encoding into an output that already holds a data set, damaged shards, and an S3 endpoint that
goes away during the job (all in-process, no Ray: the retry logic is the driver's either way)."""

import json

import pytest

from data_pipeline import EncodeError, job
from lamamba import storage
from lamamba.config import ConfigError

DIGITS = ["source.kind=digits", "source.split=test", "autoencoder.kind=identity", "autoencoder.image_channels=1",
          "resolution=8", "shard_size=100", "ray.num_workers=0", "ray.max_retries=0"]


def _files(out):
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _describes_exactly(out):
    """The manifest lists every shard file in ``out`` with its real size and sha256, and no other."""
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(s["name"] for s in manifest["shards"]) == sorted(p.name for p in out.glob("shard-*.tar"))
    for shard in manifest["shards"]:
        assert storage.sha256(str(out / shard["name"])) == shard["sha256"]
    return manifest


def test_other_settings_into_an_existing_output_are_refused_or_replace_it(encode, tmp_path, monkeypatch):
    """Used to overwrite the shards in place under the old manifest."""
    run_dir = tmp_path / "run"
    out = run_dir / "latents"
    encode(run_dir, *DIGITS)
    before = _files(out)
    with pytest.raises(ConfigError, match=r"output: .* other resolution.*replace=true"):
        encode(run_dir, *DIGITS, "resolution=16")
    with pytest.raises(ConfigError, match="flip"):
        encode(run_dir, *DIGITS, "flip=false")
    assert _files(out) == before  # nothing touched
    _, again = encode(run_dir, *DIGITS, "ray.num_workers=0", "verify_checksums=false")  # same data set: resumes
    assert again.shards_written == [] and _files(out) == before

    # replace=true, failing half-way: the old manifest is gone before any shard is rewritten.
    real = job._encode_task

    def fail_shard_2(shard, cfg):
        if shard.index == 2:
            raise RuntimeError("worker lost")
        return real(shard, cfg)

    monkeypatch.setattr(job, "_encode_task", fail_shard_2)
    with pytest.raises(EncodeError, match="shard-000002.tar"):
        encode(run_dir, *DIGITS, "shard_size=50", "replace=true")
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(job, "_encode_task", real)
    # The new settings are now the output's: a rerun resumes them without replace.
    _, resumed = encode(run_dir, *DIGITS, "shard_size=50")
    assert resumed.shards_written == ["shard-000002.tar"]
    manifest = _describes_exactly(out)
    assert manifest["num_shards"] == 9 and manifest["num_items"] == 450


def test_an_output_from_before_dataset_records_is_not_overwritten(encode, tmp_path):
    run_dir = tmp_path / "run"
    encode(run_dir, *DIGITS)
    (run_dir / "latents" / job.DATASET_NAME).unlink()
    with pytest.raises(ConfigError, match="settings not recorded"):
        encode(run_dir, *DIGITS)
    encode(run_dir, *DIGITS, "replace=true")
    _describes_exactly(run_dir / "latents")


def test_a_same_size_damaged_shard_is_redone(encode, tmp_path):
    """Used to be reported as already done unless verify_checksums was asked for."""
    run_dir = tmp_path / "run"
    encode(run_dir, *DIGITS)
    shard = run_dir / "latents" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _, rerun = encode(run_dir, *DIGITS)
    assert rerun.shards_written == ["shard-000001.tar"]
    _describes_exactly(run_dir / "latents")


def test_an_endpoint_that_goes_away_stops_the_job_after_the_budget(encode, tmp_path, monkeypatch, caplog):
    """Used to try every remaining shard for ~20 s each in turn (hours for ImageNet); now the job
    backs off on the failing shard and stops once the outage outlasts retry_budget_s."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    fs, _ = storage.filesystem("s3://outage", options)
    fs.mkdir("outage")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: lamamba's are under test
    real, attempts = job._encode_task, []

    def encode_then_go_away(shard, cfg):
        attempts.append(shard.index)
        record = real(shard, cfg)
        if shard.index == 0:
            server.stop()  # the endpoint goes away once the first shard is written
        return record

    monkeypatch.setattr(job, "_encode_task", encode_then_go_away)
    with pytest.raises(EncodeError, match=r"unreachable for \d+ s \(retry_budget_s=3\).*1 of 5 shards.*rerun"):
        encode(tmp_path / "run", *DIGITS, "output=s3://outage/latents", "retry_budget_s=3",
               *(f"storage_options.{k}={v}" for k, v in options.items()))
    assert attempts[0] == 0 and set(attempts[1:]) == {1}  # no other shard was tried during the outage
    waits = [r.getMessage().rsplit("retry in ", 1)[1] for r in caplog.records if "retry in" in r.getMessage()]
    assert waits[0] == "1 s" and len(waits) <= 3  # backoff, then the 3 s budget is spent


def test_retries_back_off_over_one_outage_and_count_other_errors_per_shard():
    retries = job.Retries(max_retries=1, budget_s=3600)
    outage = ConnectionResetError("connection reset by peer")
    assert [retries.failed(name, outage) for name in ("a", "b", "a", "c", "a", "a", "a")] == [1, 2, 4, 8, 16, 30, 30]
    retries.succeeded()  # the outage is over: the next one starts from 1 s
    assert retries.failed("a", outage) == 1
    assert retries.failed("a", ValueError("bad image")) == 0 and retries.failed("a", ValueError("bad")) is None
    with pytest.raises(job.StorageOutage, match="retry_budget_s=0"):
        job.Retries(max_retries=5, budget_s=0).failed("a", outage)
