"""The encode job through a real local Ray (2 CPUs) to a moto S3 server over HTTP and to a local folder."""

import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds

from data_pipeline import EncodeError
from data_pipeline.preprocess import to_model_input
from data_pipeline.sources import SourceItem, load_image
from data_pipeline.writer import encode_images
from lamamba import storage
from lamamba.autoencoders import AutoencoderConfig, build_autoencoder
from lamamba.data import LatentLoader, read_manifest
from lamamba.data.shard_format import unpack_shard
from lamamba.ray_runtime import ray_session

BUCKET = "latents-test"
RESOLUTION = 32


@pytest.fixture(scope="module")
def shared_ray():
    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def s3(s3_server, image_tree):
    """A bucket on the S3 API server with the image tree uploaded; yields storage options."""
    options = s3_server.bucket(BUCKET)
    fs, _ = storage.filesystem(f"s3://{BUCKET}", options)
    fs.put(image_tree, f"{BUCKET}/images", recursive=True)
    return options


def s3_overrides(options):
    return [f"storage_options.{k}={v}" for k, v in options.items()] + \
           [f"source.storage_options.{k}={v}" for k, v in options.items()]


@pytest.fixture(scope="module")
def ray_encode(shared_ray, encode):
    """The tiny-VAE encode job of a source on the shared local Ray, 2 workers."""
    def run(run_dir, source, *overrides):
        return encode(run_dir, f"source.path={source}", "autoencoder.kind=tiny-vae", f"resolution={RESOLUTION}",
                      "shard_size=4", "batch_size=3", "ray.num_workers=2", "ray.max_retries=1", *overrides)
    return run


def direct_encode(encoder, image_tree, key):
    """The reference: one image, one process, no batching, on as many threads as a Ray worker
    (which inherits OMP_NUM_THREADS): CPU convolutions differ in the last bit across thread counts."""
    image = to_model_input(load_image(SourceItem(key, 0, os.path.join(image_tree, key))), RESOLUTION, 3)
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        return encode_images(encoder, image[None], batch_size=1)[0]
    finally:
        torch.set_num_threads(previous)


def test_encode_to_s3_and_local_equal_direct_encode(ray_encode, s3, image_tree, tmp_path):
    s3_out = f"s3://{BUCKET}/out"
    _, s3_summary = ray_encode(tmp_path / "s3_run", f"s3://{BUCKET}/images", f"output={s3_out}",
                               *s3_overrides(s3))
    local_cfg, local_summary = ray_encode(tmp_path / "local_run", image_tree)

    for summary in (s3_summary, local_summary):
        assert summary.images == 18 and summary.skipped_images == 1
        assert len(summary.shards_written) == 5 and summary.shards_already_done == 0
    assert "testing" not in (tmp_path / "s3_run" / "config.yaml").read_text()  # credentials not logged

    s3_manifest = read_manifest(s3_out, s3)
    manifest = read_manifest(local_cfg.output_url)
    assert s3_manifest["id"] == manifest["id"]  # same bytes on both backends
    assert manifest["num_items"] == 18 and manifest["num_classes"] == 3
    assert [s["key"] for s in manifest["skipped"]] == ["class_1/broken.jpg"]
    assert (manifest["resolution"], manifest["latent_size"], manifest["channels"]) == (RESOLUTION, 4, 4)
    assert manifest["scale_factor"] == pytest.approx(0.18215) and manifest["crop"] == "adm_center_crop"

    seen = 0
    encoder = build_autoencoder(AutoencoderConfig(kind="tiny-vae"))
    for shard in manifest["shards"]:
        data = storage.read_bytes(storage.join(s3_out, shard["name"]), s3)
        arrays = unpack_shard(data, shard["name"])
        for moments, label, source in zip(arrays.moments, arrays.labels, arrays.sources):
            assert label == int(source.split("/")[0].split("_")[1])
            np.testing.assert_array_equal(moments, direct_encode(encoder, image_tree, source))
            seen += 1
    assert seen == 18

    first = os.path.join(local_cfg.output_url, manifest["shards"][0]["name"])
    samples = list(wds.WebDataset(first, shardshuffle=False).decode())
    assert len(samples) == manifest["shards"][0]["num_items"] and samples[0]["moments.npy"].dtype == np.float16

    # The reader streams the same latents from S3 as from the local copy.
    batches = [next(iter(LatentLoader(url, 6, 0, 1, seed=3, storage_options=opts, cache_dir=str(tmp_path / name))))
               for url, opts, name in ((s3_out, s3, "c1"), (local_cfg.output_url, None, "c2"))]
    torch.testing.assert_close(batches[0], batches[1], rtol=0, atol=0)


def test_failure_between_upload_and_marker_then_rerun(ray_encode, image_tree, tmp_path):
    run_dir = tmp_path / "run"
    out = run_dir / "latents"
    # A directory where shard 1's marker goes: its upload succeeds, writing its marker fails (every retry).
    (out / "shard-000001.done.json").mkdir(parents=True)
    with pytest.raises(EncodeError, match="shard-000001.tar"):
        ray_encode(run_dir, image_tree)
    assert (out / "shard-000001.tar").exists() and not (out / "manifest.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name != "shard-000001.tar"}
    assert len(done) == 4

    (out / "shard-000001.done.json").rmdir()
    with open(out / "shard-000003.tar", "ab") as f:  # a finished shard damaged since: must be redone
        f.write(b"junk")
    _, summary = ray_encode(run_dir, image_tree)
    assert sorted(summary.shards_written) == ["shard-000001.tar", "shard-000003.tar"]
    assert summary.shards_already_done == 3 and summary.images == 7
    for name, mtime in done.items():
        if name != "shard-000003.tar":
            assert (out / name).stat().st_mtime_ns == mtime, f"{name} was re-encoded"

    names = sorted(os.listdir(out))
    assert names == sorted([f"shard-{i:06d}.tar" for i in range(5)] + [f"shard-{i:06d}.done.json" for i in range(5)]
                           + ["manifest.json", "dataset.json"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_items"] == 18 and len(manifest["shards"]) == 5
    loader = LatentLoader(str(out), 18, 0, 1, seed=0, cache_dir=str(tmp_path / "cache"))
    assert sorted(next(iter(loader))["index"].tolist()) == list(range(18))

    _, again = ray_encode(run_dir, image_tree)  # everything done: nothing is encoded
    assert again.shards_written == [] and again.shards_already_done == 5

    data = bytearray((out / "shard-000004.tar").read_bytes())  # same size, different bytes
    data[600] ^= 0xFF
    (out / "shard-000004.tar").write_bytes(bytes(data))
    _, size_only = ray_encode(run_dir, image_tree, "verify_checksums=false")  # trusts the recorded size
    assert size_only.shards_written == []
    _, verified = ray_encode(run_dir, image_tree)  # the default re-reads: the damage is redone
    assert verified.shards_written == ["shard-000004.tar"]
    assert json.loads((out / "manifest.json").read_text())["id"] == manifest["id"]


def test_a_non_finite_latent_fails_its_shard_naming_the_image(encode, image_tree, tmp_path, monkeypatch):
    """A NaN latent was written into the shard (and trained on); now the shard fails, naming the
    image, and nothing of it is written."""
    import data_pipeline.writer as writer

    real = writer.encode_images

    def nan_for_the_second(encoder, images, batch_size, flip=True):
        moments = real(encoder, images, batch_size, flip)
        moments[1, 0, 1] = np.inf  # the std of the second image overflows float16
        return moments

    monkeypatch.setattr(writer, "encode_images", nan_for_the_second)
    run_dir = tmp_path / "run"
    with pytest.raises(EncodeError) as err:
        encode(run_dir, f"source.path={image_tree}", "autoencoder.kind=identity", f"resolution={RESOLUTION}",
               "shard_size=4", "ray.num_workers=0", "ray.max_retries=0")
    assert "non-finite values (NaN or inf) in item" in str(err.value)
    assert not list(run_dir.rglob("*.tar"))
