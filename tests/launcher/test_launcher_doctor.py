"""`lamamba doctor`: what a job would use and what is wrong, exit 1 when the job would fail; the
conditions of a GPU node, an S3 endpoint, weights and disk are injected on this CPU machine."""

import hashlib
import json
import socket
from collections import namedtuple

import pytest

from lamamba import devices
from launcher.cli import main
from launcher.commands import doctor

OLD_DRIVER = devices.CudaProbe("2.13.0", "13.0", False, 0, "535.104.05",
                               "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020)")


def checks(capsys, *argv) -> tuple[int, dict, str]:
    rc = main(["doctor", "--json", *argv])
    captured = capsys.readouterr()
    return rc, {c["name"]: c for c in json.loads(captured.out)}, captured.err


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "LOCAL_RANK",
                "LAMAMBA_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-home")  # no ~/.aws/credentials


def test_this_cpu_machine_passes_with_the_fallback_said(capsys, clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMAMBA_DATA_CACHE", str(tmp_path / "cache"))
    rc, found, _ = checks(capsys)
    assert rc == 0
    assert found["device"]["status"] == "warn" and "CPU-only build" in found["device"]["detail"]
    assert found["scan"]["status"] == "ok" and found["scan"]["detail"].startswith("torch")
    assert found["deepspeed"]["status"] == "ok" and found["cache disk"]["status"] in ("ok", "warn")
    assert str(tmp_path / "cache") in found["cache disk"]["detail"]


def test_a_gpu_node_with_an_old_driver_fails_with_the_reason(capsys, clean_env, monkeypatch):
    monkeypatch.setattr(devices, "probe_cuda", lambda: OLD_DRIVER)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    rc, found, err = checks(capsys)
    assert rc == 1 and "the train job would fail here: device" in err
    detail = found["device"]["detail"]
    assert found["device"]["status"] == "FAIL"
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3" in detail and "built for CUDA 13.0" in detail and "535.104.05" in detail
    assert "NVIDIA driver 535.104.05" in found["torch"]["detail"]
    # device=cpu on purpose passes on the same node
    rc, found, _ = checks(capsys, "engine.device=cpu")
    assert rc == 0 and found["device"]["status"] == "ok"


def test_nccl_asked_for_without_cuda_fails(capsys, clean_env):
    rc, found, _ = checks(capsys, "engine.device=cpu", "engine.backend=nccl")
    assert rc == 1 and found["nccl"]["status"] == "FAIL"


def test_s3_endpoint_and_credentials(capsys, clean_env, monkeypatch, s3_server):
    secret = "s3cr3t-never-printed"
    monkeypatch.setenv("LAMAMBA_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    rc, found, err = checks(capsys, "engine.device=cpu", "checkpoint.dir=s3://bucket/ckpt")
    assert rc == 0 and found["s3 endpoint"]["status"] == "ok" and found["s3 credentials"]["status"] == "ok"
    assert "AWS_ACCESS_KEY_ID" in found["s3 credentials"]["detail"] and secret not in json.dumps(found) + err

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("LAMAMBA_S3_ENDPOINT", f"http://127.0.0.1:{closed}")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    rc, found, _ = checks(capsys, "engine.device=cpu", "checkpoint.dir=s3://bucket/ckpt")
    assert rc == 1 and found["s3 endpoint"]["status"] == "FAIL" and f"127.0.0.1:{closed}" in found["s3 endpoint"]["detail"]
    assert found["s3 credentials"]["status"] == "warn"


def test_weights_with_their_sha256(capsys, clean_env, tmp_path):
    blob = b"not really inception"
    digest = hashlib.sha256(blob).hexdigest()
    good = tmp_path / f"pt_inception-2015-12-05-{digest[:8]}.pth"
    good.write_bytes(blob)
    rc, found, _ = checks(capsys, "--job", "evaluate", "extractor.device=cpu", f"extractor.weights={good}")
    assert rc == 0 and found["inception weights"]["detail"] == f"{good} sha256 {digest}"

    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"  # the real file's name, other bytes
    bad.write_bytes(blob)
    rc, found, _ = checks(capsys, "--job", "evaluate", "extractor.device=cpu", f"extractor.weights={bad}")
    assert rc == 1 and "does not start with 6726825d" in found["inception weights"]["detail"]

    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(blob)
    rc, found, _ = checks(capsys, "--job", "sample", "device=cpu", f"autoencoder.path_or_id={vae}")
    assert rc == 0 and digest in found["vae weights"]["detail"]
    rc, found, _ = checks(capsys, "--job", "sample", "device=cpu", "autoencoder.path_or_id=nobody/no-such-vae")
    assert rc == 1 and "Hugging Face cache" in found["vae weights"]["detail"]


def test_too_little_disk_for_the_latent_cache(capsys, clean_env, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage(100e9, 99e9, 1e9))
    monkeypatch.setattr(doctor, "_manifest_gb", lambda manifest: 20.0)
    rc, found, _ = checks(capsys, "engine.device=cpu")
    assert rc == 1 and "1.0 GB free, the data set needs about 20.0 GB" in found["cache disk"]["detail"]


def test_a_dit_job_has_no_scan_check(capsys, clean_env, tmp_path, monkeypatch):
    """DiT has no selective scan: the doctor must not judge a scan backend for it (its d_state is unset)."""
    monkeypatch.setenv("LAMAMBA_DATA_CACHE", str(tmp_path / "cache"))
    rc, found, _ = checks(capsys, "configs/train/dit_tiny_digits.yaml")
    assert rc == 0 and "scan" not in found and found["deepspeed"]["status"] == "ok"
