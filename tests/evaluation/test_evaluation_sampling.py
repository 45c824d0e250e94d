"""The sample job: identical bytes whatever the fan-out (1 process, 2 Ray workers, 2 torchrun
ranks), resume after a kill computes only the missing shards, protocol checks, and the evaluate
command on the result against an ADM-format reference."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lamamba.config import ConfigError, load_config
from lamamba.evaluation.config import SampleConfig
from lamamba.evaluation.sampler import run_sampling
from lamamba.evaluation.shards import done_shards
from lamamba.models import ModelConfig, build_model
from lamamba.models.io import save_model_weights

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES, NUM_CLASSES = 6, 10
BASE = [f"num_samples={NUM_SAMPLES}", "shard_size=2", "batch_size=2", "steps=2", "sampler=ddpm", "cfg_scale=1.5",
        "autoencoder.kind=tiny-vae", "progress=false", "seed=7"]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _images(out):
    return {s: np.load(Path(out) / f"shard_{s:05d}.npz")["arr_0"] for s in range(NUM_SAMPLES // 2)}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = ModelConfig(preset="tiny", input_size=8, in_channels=4, num_classes=NUM_CLASSES)
        model = build_model(cfg)
    ckpt_dir = root / "step_00000010"  # a training checkpoint directory holding the EMA
    ckpt_dir.mkdir()
    save_model_weights(str(ckpt_dir / "ema.safetensors"), model.state_dict(), cfg)
    from test_evaluation_inception import random_published_state_dict

    inception = root / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_published_state_dict(), inception)
    local = root / "local"
    computed = run_sampling(load_config(SampleConfig, None, [*BASE, f"checkpoint={ckpt_dir}", f"out={local}"]))
    assert computed == [0, 1, 2]
    return {"root": root, "ckpt": ckpt_dir, "inception": inception, "local": local}


@pytest.fixture(scope="module")
def fanout(work):
    """The same sample set by 2 Ray workers and by 2 torchrun ranks (these also store features)."""
    import ray

    ray_out = work["root"] / "ray"  # the sampler starts a local Ray (2 CPUs here) and shuts it down
    computed = run_sampling(load_config(SampleConfig, None, [
        *BASE, f"checkpoint={work['ckpt']}", f"out={ray_out}", "launcher=ray", "ray.num_workers=2"]))
    assert computed == [0, 1, 2] and not ray.is_initialized()

    tr_out = work["root"] / "torchrun"  # launcher "auto" picks torchrun ranks from WORLD_SIZE
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "launcher.cli", "sample", *BASE, f"checkpoint={work['ckpt']}", f"out={tr_out}",
           "outputs=both", f"extractor.weights={work['inception']}", "extractor.device=cpu",
           f"run_dir={work['root'] / 'torchrun_run'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"ray": ray_out, "torchrun": tr_out}


def test_ray_workers_and_torchrun_ranks_give_the_same_bytes(work, fanout):
    ray_out, tr_out = fanout["ray"], fanout["torchrun"]
    local = _images(work["local"])
    for out in (ray_out, tr_out):
        for shard, images in _images(out).items():
            assert images.dtype == np.uint8 and images.shape == (2, 64, 64, 3)
            assert np.array_equal(images, local[shard]), f"{out} shard {shard} differs"
    labels = np.concatenate([np.load(work["local"] / f"shard_{s:05d}.npz")["labels"] for s in range(3)])
    assert labels.tolist() == [i % NUM_CLASSES for i in range(NUM_SAMPLES)]
    assert (tr_out / "shard_00002.features.npz").exists()
    meta = json.loads((tr_out / "metadata.json").read_text())["protocol"]
    assert meta["guided_channels"] == 4 and meta["cfg_scale"] == 1.5 and meta["sampler"] == "ddpm"
    assert meta["label_scheme"] == f"label = index mod {NUM_CLASSES}" and len(meta["checkpoint_sha256"]) == 64
    assert (work["root"] / "torchrun_run" / "config.yaml").exists()


def test_a_killed_run_resumes_computing_only_the_missing_shards(work):
    out = work["root"] / "killed"
    cmd = [sys.executable, "-m", "launcher.cli", "sample", *BASE, f"checkpoint={work['ckpt']}", f"out={out}",
           f"run_dir={work['root'] / 'killed_run'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while not done_shards(str(out)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = done_shards(str(out))
    assert finished and len(finished) < 3, f"kill came too late or never: {finished}"
    stamps = {s: (out / f"shard_{s:05d}.npz").stat().st_mtime_ns for s in finished}
    from evaluation_fakes import ProjectionExtractor
    from lamamba.evaluation.evaluator import collect_sample_features

    with pytest.raises(ValueError, match="not finished"):  # an incomplete set is never evaluated
        collect_sample_features(str(out), ProjectionExtractor())

    computed = run_sampling(load_config(SampleConfig, None, [*BASE, f"checkpoint={work['ckpt']}", f"out={out}"]))
    assert computed == sorted(set(range(3)) - set(finished))
    assert {s: (out / f"shard_{s:05d}.npz").stat().st_mtime_ns for s in finished} == stamps
    local = _images(work["local"])
    assert all(np.array_equal(images, local[s]) for s, images in _images(out).items())
    assert run_sampling(load_config(SampleConfig, None, [*BASE, f"checkpoint={work['ckpt']}", f"out={out}"])) == []


def test_rerun_with_another_protocol_is_refused(work):
    cfg = load_config(SampleConfig, None, [*BASE, "cfg_scale=4.0", f"checkpoint={work['ckpt']}", f"out={work['local']}"])
    with pytest.raises(ConfigError, match="cfg_scale"):
        run_sampling(cfg)
    with pytest.raises(ConfigError, match="guided_channels"):
        run_sampling(load_config(SampleConfig, None, [*BASE, "guided_channels=5", f"checkpoint={work['ckpt']}",
                                                      f"out={work['root'] / 'never'}"]))
    with pytest.raises(ConfigError, match="does not exist"):
        run_sampling(load_config(SampleConfig, None, [*BASE, f"checkpoint={work['root'] / 'nope.safetensors'}"]))


def test_features_stored_by_the_sampler_are_reused(work, fanout):
    from lamamba.evaluation.config import ExtractorConfig
    from lamamba.evaluation.evaluator import collect_sample_features
    from lamamba.evaluation.features import build_extractor

    extractor = build_extractor(ExtractorConfig(weights=str(work["inception"]), device="cpu"))
    stored = collect_sample_features(str(fanout["torchrun"]), extractor)  # features-only path
    computed = collect_sample_features(str(work["local"]), extractor)  # images through the network
    np.testing.assert_allclose(stored.pool_features, computed.pool_features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored.logits, computed.logits, rtol=1e-4, atol=1e-5)
    assert stored.pool.n == computed.pool.n == NUM_SAMPLES


def test_evaluate_against_an_adm_reference(work, tmp_path, capsys):
    """`lamamba evaluate` on the samples with an ADM-format reference holding the same images: the
    stored statistics are used (a shifted mu moves FID by exactly the shift), precision/recall 1.
    The extractor is a small plug-in (the Inception path is covered above)."""
    from evaluation_fakes import ProjectionExtractor
    from launcher.cli import main
    from lamamba.evaluation.statistics import FeatureStats

    images = np.concatenate(list(_images(work["local"]).values()))
    feats = ProjectionExtractor()(images)
    pool, spatial = FeatureStats.of(feats["pool"]).gaussian(), FeatureStats.of(feats["spatial"]).gaussian()
    mu = pool.mu.copy()
    mu[0] += 1.0  # FID must grow by exactly 1 if the stored mu is used
    reference = tmp_path / "VIRTUAL_tiny_labeled.npz"
    np.savez(reference, arr_0=images, mu=mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma)

    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--samples", str(work["local"]), "--reference", str(reference), "--out", str(out),
                 f"run_dir={tmp_path / 'eval_run'}", "extractor.kind=evaluation_fakes:build"])
    assert code == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert metrics["fid"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["sfid"] == pytest.approx(0.0, abs=1e-3)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    assert metrics["inception_score"] >= 1.0
    card = result["protocol"]
    assert card["num_samples"] == NUM_SAMPLES and card["sample_metadata"]["protocol"]["steps"] == 2
    assert card["feature_extractor"] == "test-projection"
    # ADM's float16 distance blocks by default, recorded with their float32 fallbacks
    assert card["precision_recall_distances"]["mode"] == "adm_float16"
    assert card["precision_recall_distances"]["blocks"] > 0
    assert "float16" in card["definitions"]["precision_recall"]
    assert (tmp_path / "eval_run" / "config_hash").exists()
    assert "precision" in capsys.readouterr().out

    assert main(["evaluate", "--samples", str(work["local"]), "--reference", str(tmp_path / "missing.npz"),
                 f"run_dir={tmp_path / 'eval_run'}", "extractor.kind=evaluation_fakes:build"]) == 1
    assert main(["evaluate", "--samples", str(work["local"]), "--reference", str(reference),
                 f"run_dir={tmp_path / 'eval_run'}", f"extractor.weights={tmp_path / 'none.pth'}"]) == 1
    assert "not found" in capsys.readouterr().err


def test_samples_and_reference_on_s3(work, tmp_path, monkeypatch, s3_server):
    from lamamba import storage
    from lamamba.evaluation.config import EvalConfig
    from lamamba.evaluation.evaluator import evaluate

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    s3_server.bucket("lamamba-eval")
    out = "s3://lamamba-eval/samples"
    overrides = [*BASE, "num_samples=4", "cfg_scale=1.0", f"checkpoint={work['ckpt']}", f"out={out}"]
    assert run_sampling(load_config(SampleConfig, None, overrides)) == [0, 1]
    assert run_sampling(load_config(SampleConfig, None, overrides)) == []  # markers found on S3
    buf = io.BytesIO()
    np.savez(buf, arr_0=np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8))
    storage.write_bytes("s3://lamamba-eval/ref.npz", buf.getvalue())
    result = evaluate(load_config(EvalConfig, None, [
        f"samples={out}", "reference=s3://lamamba-eval/ref.npz", "out=s3://lamamba-eval/metrics.json",
        f"run_dir={tmp_path}", "extractor.kind=evaluation_fakes:build"]))
    assert result["protocol"]["num_samples"] == 4
    assert json.loads(storage.read_bytes("s3://lamamba-eval/metrics.json"))["metrics"] == result["metrics"]


def test_a_damaged_shard_is_named_by_evaluate_and_redone_by_sample(work, tmp_path, capsys):
    """Used to be a BadZipFile traceback in evaluate, and "all finished" from sample."""
    import shutil

    from evaluation_fakes import ProjectionExtractor
    from launcher.cli import main
    from lamamba.evaluation.evaluator import collect_sample_features
    from lamamba.evaluation.shards import SampleSetError

    out = tmp_path / "samples"
    shutil.copytree(work["local"], out)
    marker = json.loads((out / "shard_00001.done").read_text())
    assert marker["files"]["images"]["size"] == (out / "shard_00001.npz").stat().st_size
    damaged = out / "shard_00001.npz"
    with open(damaged, "r+b") as f:  # same size, other bytes
        f.seek(damaged.stat().st_size // 2)
        f.write(b"\x00garbage\x00" * 4)
    with pytest.raises(SampleSetError, match=r"shard 1 .*shard_00001\.npz is damaged"):
        collect_sample_features(str(out), ProjectionExtractor())
    reference = tmp_path / "ref.npz"
    np.savez(reference, arr_0=np.concatenate(list(_images(work["local"]).values())))
    assert main(["evaluate", "--samples", str(out), "--reference", str(reference),
                 f"run_dir={tmp_path / 'eval_run'}", "extractor.kind=evaluation_fakes:build"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lamamba")]
    assert len(err) == 1 and "shard 1" in err[0] and "shard_00001.npz is damaged (its sha256" in err[0], err

    (out / "shard_00002.npz").write_bytes(b"truncated")
    computed = run_sampling(load_config(SampleConfig, None, [*BASE, f"checkpoint={work['ckpt']}", f"out={out}"]))
    assert computed == [1, 2]  # the damaged shards are redone, the good one kept
    assert all(np.array_equal(images, _images(work["local"])[s]) for s, images in _images(out).items())
    assert collect_sample_features(str(out), ProjectionExtractor()).pool.n == NUM_SAMPLES


def test_a_marker_pointing_outside_the_sample_set_is_refused(work, tmp_path):
    import shutil

    from evaluation_fakes import ProjectionExtractor
    from lamamba.evaluation.evaluator import collect_sample_features
    from lamamba.evaluation.shards import SampleSetError

    out = tmp_path / "samples"
    shutil.copytree(work["local"], out)
    marker = json.loads((out / "shard_00000.done").read_text())
    marker["files"]["images"]["name"] = "../../elsewhere.npz"
    (out / "shard_00000.done").write_text(json.dumps(marker))
    with pytest.raises(SampleSetError, match="elsewhere.npz"):
        collect_sample_features(str(out), ProjectionExtractor())


def test_a_non_finite_image_is_an_error_naming_the_sample(work, tmp_path, monkeypatch):
    """A NaN image would have been written as a black PNG (uint8 of NaN) and moved FID silently."""
    from lamamba.autoencoders import Autoencoder, NonFiniteError

    decode = Autoencoder.decode

    def nan_for_one(self, latents):
        images = decode(self, latents)
        images[1, 0, 2, 3] = float("nan")
        return images

    monkeypatch.setattr(Autoencoder, "decode", nan_for_one)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteError, match=r"decoded images: non-finite values \(NaN or inf\) in sample 1$"):
        run_sampling(load_config(SampleConfig, None, [*BASE, f"checkpoint={work['ckpt']}", f"out={out}"]))
    assert not done_shards(str(out))
