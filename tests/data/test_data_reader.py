"""LatentLoader: deterministic global order, rank slicing, resume, keyed draws, workers, corrupt shards."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.preprocess import to_model_input
from data_pipeline.sources import DIGITS_PREFIX, SourceItem, digits_split, load_image
from lamamba.autoencoders import AutoencoderConfig, build_autoencoder
from lamamba.data import LatentLoader, ShardError
from lamamba.data.loader import keyed_latents
from lamamba.data.shard_format import unpack_shard
from lamamba.rng import keyed_normals, keyed_seed, purpose_id

G = 6  # global batch; the dataset has 18 items, so 3 steps per epoch


def all_moments(folder, manifest):
    """(N, 2, 2, C, h, w) moments of the data set in dataset-index order, decoded without the loader."""
    return np.concatenate([unpack_shard((Path(folder) / s["name"]).read_bytes(), s["name"]).moments
                           for s in manifest["shards"] if s["num_items"]])


def take(loader, steps):
    it = iter(loader)
    return [next(it) for _ in range(steps)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def test_global_batches_independent_of_ranks_and_workers(tiny_vae_dataset, cache):
    single = take(LatentLoader(tiny_vae_dataset, G, 0, 1, seed=7, cache_dir=cache), 8)
    ranks = [take(LatentLoader(tiny_vae_dataset, G, r, 2, seed=7, cache_dir=cache), 8) for r in range(2)]
    workers = take(LatentLoader(tiny_vae_dataset, G, 0, 1, seed=7, num_workers=2, cache_dir=cache), 8)
    for step, batch in enumerate(single):
        assert batch["x"].shape == (G, 4, 4, 4) and batch["x"].dtype == torch.float32
        for key in batch:
            joined = torch.cat([ranks[0][step][key], ranks[1][step][key]])
            torch.testing.assert_close(joined, batch[key], rtol=0, atol=0)
            torch.testing.assert_close(workers[step][key], batch[key], rtol=0, atol=0)
    other_seed = take(LatentLoader(tiny_vae_dataset, G, 0, 1, seed=8, cache_dir=cache), 1)
    assert not torch.equal(other_seed[0]["index"], single[0]["index"])


def test_resume_from_any_step_matches_straight_run(tiny_vae_dataset, cache):
    loader = LatentLoader(tiny_vae_dataset, G, 1, 2, seed=1, cache_dir=cache)
    straight = take(loader, 7)
    assert loader.samples_consumed == 7 * G
    for step in range(7):
        resumed = LatentLoader(tiny_vae_dataset, G, 1, 2, seed=1, start_sample=step * G, cache_dir=cache)
        for later, batch in enumerate(take(resumed, 7 - step)):
            for key in batch:
                torch.testing.assert_close(batch[key], straight[step + later][key], rtol=0, atol=0)
        assert resumed.samples_consumed == 7 * G


def test_each_sample_once_per_epoch_and_draws_change_between_epochs(tiny_vae_dataset, cache):
    loader = LatentLoader(tiny_vae_dataset, 4, 0, 1, seed=5, cache_dir=cache)  # 4 does not divide 18
    n = loader.manifest["num_items"]
    batches = take(loader, 3 * n // 4 + 1)
    index = torch.cat([b["index"] for b in batches])[:3 * n]
    epoch = torch.cat([b["epoch"] for b in batches])[:3 * n]
    x = torch.cat([b["x"] for b in batches])[:3 * n]
    for e in range(3):
        assert sorted(index[epoch == e].tolist()) == list(range(n))
        assert torch.equal(epoch[e * n:(e + 1) * n], torch.full((n,), e))
    assert not torch.equal(index[:n], index[n:2 * n])  # a new order each epoch

    # x is the keyed draw: flip and posterior noise from (seed, index, epoch).
    moments = torch.from_numpy(all_moments(tiny_vae_dataset, loader.manifest)).float()
    keys = list(zip(index.tolist(), epoch.tolist()))
    flip = torch.tensor([keyed_seed(5, purpose_id("flip"), i, e) & 1 for i, e in keys])
    eps = torch.from_numpy(np.concatenate([keyed_normals(np.array([keyed_seed(5, purpose_id("posterior"), i, e)],
                                                                   dtype=np.uint64), 64) for i, e in keys]))
    eps = eps.view(-1, 4, 4, 4)  # one sample at a time: the batch's draws do not depend on its other samples
    chosen = moments[index, flip]
    expected = (chosen[:, 0] + chosen[:, 1] * eps) * loader.manifest["scale_factor"]
    torch.testing.assert_close(x, expected, rtol=0, atol=0)

    by_sample = {}
    for i, (idx, e) in enumerate(keys):
        by_sample.setdefault(idx, {})[e] = (int(flip[i]), x[i])
    assert len({f for d in by_sample.values() for f, _ in d.values()}) == 2
    assert any(d[0][0] != d[1][0] for d in by_sample.values())  # flips change between epochs
    assert all(not torch.equal(d[0][1], d[1][1]) for d in by_sample.values())  # so do posterior draws


def test_keyed_latents_of_a_batch_are_those_of_each_sample_alone():
    rng = np.random.default_rng(0)
    chosen = rng.standard_normal((5, 2, 4, 8, 8)).astype(np.float16)
    index, epochs = np.array([3, 9, 3, 4, 9]), np.array([0, 0, 1, 0, 0])
    batch = keyed_latents(chosen, index, epochs, seed=11, scale=0.5)
    for k in range(5):
        alone = keyed_latents(chosen[k:k + 1], index[k:k + 1], epochs[k:k + 1], seed=11, scale=0.5)
        assert torch.equal(alone[0], batch[k])
    same = np.repeat(chosen[:1], 5, axis=0)  # same moments: the keys alone make the draws differ
    draws = keyed_latents(same, index, epochs, seed=11, scale=0.5)
    assert len({d.numpy().tobytes() for d in draws}) == 4  # (9, 0) twice; index and epoch both matter
    assert torch.equal(draws[1], draws[4])
    assert not torch.equal(keyed_latents(same, index, epochs, seed=12, scale=0.5)[0], draws[0])


def test_corrupt_or_truncated_shard_names_the_shard(tiny_vae_dataset, tmp_path):
    for damage in ("truncate", "flip_bytes"):
        copy = tmp_path / damage
        shutil.copytree(tiny_vae_dataset, copy)
        shard = copy / "shard-000002.tar"
        data = bytearray(shard.read_bytes())
        if damage == "truncate":
            data = data[:len(data) // 2]
        else:
            data[1600:1700] = bytes(b ^ 0xFF for b in data[1600:1700])
        shard.write_bytes(bytes(data))
        with pytest.raises(ShardError, match="shard-000002.tar"):  # by the first step that needs it
            take(LatentLoader(str(copy), G, 0, 1, seed=0, cache_dir=str(tmp_path / f"cache_{damage}"),
                              backoff_s=0.01), 3)


def test_bad_arguments_are_named(tiny_vae_dataset, cache):
    with pytest.raises(ValueError, match="world_size"):
        LatentLoader(tiny_vae_dataset, 5, 0, 2, seed=0, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        LatentLoader(cache + "/nowhere", 4, 0, 1, seed=0, cache_dir=cache)


def test_digits_identity_round_trip(encode, tmp_path):
    train, test = digits_split("train"), digits_split("test")
    assert len(train) + len(test) == 1797 and not set(train) & set(test)
    assert np.array_equal(np.sort(np.concatenate([train, test])), digits_split("all"))

    cfg, summary = encode(tmp_path / "run", "source.kind=digits", "source.split=test", "autoencoder.kind=identity",
                          "autoencoder.image_channels=1", "resolution=16", "shard_size=200", "ray.num_workers=0")
    assert summary.images == len(test) == 450 and summary.skipped_images == 0
    loader = LatentLoader(cfg.output_url, 450, 0, 1, seed=2, cache_dir=str(tmp_path / "cache"))
    assert (loader.manifest["channels"], loader.manifest["latent_size"], loader.manifest["scale_factor"]) == (1, 16, 1.0)
    batch = next(iter(loader))
    assert batch["x"].shape == (450, 1, 16, 16) and batch["x"].abs().max() <= 1.0

    shards = [unpack_shard((Path(cfg.output_url) / s["name"]).read_bytes(), s["name"]) for s in loader.manifest["shards"]]
    keys, sources = [k for a in shards for k in a.keys], [k for a in shards for k in a.sources]
    identity = build_autoencoder(AutoencoderConfig(kind="identity", image_channels=1))
    flips = [keyed_seed(2, purpose_id("flip"), i, e) & 1 for i, e in zip(batch["index"].tolist(), batch["epoch"].tolist())]
    for row in range(0, 450, 37):
        position = int(keys[int(batch["index"][row])])  # shards are strided: the key is the listing position
        key = f"{DIGITS_PREFIX}{test[position]:04d}"
        assert sources[int(batch["index"][row])] == key
        image = to_model_input(load_image(SourceItem(key, 0)), 16, 1)
        if flips[row]:
            image = image.flip(-1)
        torch.testing.assert_close(batch["x"][row], image, rtol=0, atol=1e-3)  # float16 storage
        torch.testing.assert_close(identity.decode(batch["x"][row:row + 1])[0], batch["x"][row])
