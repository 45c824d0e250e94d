"""The streaming reader: two-level order, bounded node cache, concurrent readers and runs, S3 faults."""

import fcntl
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.synthetic import write_synthetic
from data_pipeline.writer import write_shard
from lamamba import storage
from lamamba.data import CacheFullError, LatentLoader, ManifestError, ShardCache, ShardError, epoch_order
from lamamba.data.cache import ShardRef
from lamamba.data.shard_format import ShardSample, index_file_bytes
from lamamba.storage import UnsafePathError

N, SHARD, BLOCK, G = 60, 4, 3, 8  # 15 shards in 5 blocks of 3; 7.5 steps per epoch


@pytest.fixture(scope="module")
def stream_data(tmp_path_factory):
    """A synthetic data set of 15 strided shards (the manifest's URL) and the size of one shard."""
    url = write_synthetic(str(tmp_path_factory.mktemp("stream") / "data"), N, SHARD, num_classes=5)
    manifest = json.loads(Path(url).read_text())
    return url, max(s["size"] for s in manifest["shards"])


def loader(url, cache, rank=0, world=1, seed=3, limit_gb=1.0, **kw):
    return LatentLoader(url, G, rank, world, seed, cache_dir=str(cache), cache_limit_gb=limit_gb,
                        block_shards=BLOCK, backoff_s=0.01, **kw)


def take(source, steps):
    it = iter(source)
    return [next(it) for _ in range(steps)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def joined(per_rank):
    return [{k: torch.cat([r[s][k] for r in per_rank]) for k in per_rank[0][s]} for s in range(len(per_rank[0]))]


def test_order_is_two_level_and_covers_each_epoch(stream_data):
    url, _ = stream_data
    sizes = tuple(s["num_items"] for s in json.loads(Path(url).read_text())["shards"])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    orders = [epoch_order(3, e, sizes, BLOCK) for e in range(3)]
    for order in orders:
        assert sorted(order.index.tolist()) == list(range(N))
        assert len(order.blocks) == 5 and sorted(s for b in order.blocks for s in b) == list(range(15))
        begin = 0
        for block, end in zip(order.blocks, order.block_end):  # a block's positions hold exactly its shards
            shard_of = np.searchsorted(starts, order.index[begin:end], side="right") - 1
            assert set(shard_of.tolist()) == set(block)
            begin = end
    assert not np.array_equal(orders[0].index, orders[1].index)
    assert orders[0].blocks != orders[1].blocks
    assert np.array_equal(epoch_order(3, 1, sizes, BLOCK).index, orders[1].index)  # a pure function
    full = epoch_order(3, 0, sizes, 15)  # one block: a permutation of the whole epoch
    assert len(full.blocks) == 1 and sorted(full.index.tolist()) == list(range(N))


def test_global_batches_same_for_1_2_4_ranks_and_0_2_workers(stream_data, tmp_path):
    url, _ = stream_data
    steps = 10  # past the end of the first epoch
    single = take(loader(url, tmp_path / "a"), steps)
    for world in (2, 4):
        assert_same(joined([take(loader(url, tmp_path / "a", r, world), steps) for r in range(world)]), single)
    assert_same(take(loader(url, tmp_path / "b", num_workers=2), steps), single)
    assert_same(joined([take(loader(url, tmp_path / "b", r, 2, num_workers=2), steps) for r in range(2)]), single)
    index = torch.cat([b["index"] for b in single])
    epoch = torch.cat([b["epoch"] for b in single])
    assert sorted(index[epoch == 0].tolist()) == list(range(N))


def test_resume_at_any_step_including_mid_block(stream_data, tmp_path):
    url, _ = stream_data
    straight = take(loader(url, tmp_path, 1, 2), 9)
    for step in range(9):  # blocks hold 12 samples, steps 8: most resume points fall inside a block
        resumed = loader(url, tmp_path, 1, 2, start_sample=step * G)
        assert_same(take(resumed, 9 - step), straight[step:])
        assert resumed.samples_consumed == 9 * G


def _du(folder):
    """Bytes of every file in the cache's shard folder, listed under the cache's accounting lock:
    read-ahead threads evict and rename meanwhile, and a listing taken across a rename can name
    a file twice or not at all."""
    total = 0
    with open(os.path.join(folder, "cache.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for entry in os.scandir(os.path.join(folder, "shards")):
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                pass
    return total


def test_disk_never_over_the_limit_on_data_10x_the_limit(stream_data, tmp_path):
    url, shard_bytes = stream_data
    limit = 8 * shard_bytes  # blocks of one shard, steps of one shard: 5 shards pinned at most
    big = write_synthetic(str(tmp_path / "big"), 84 * SHARD, SHARD, num_classes=5)
    assert sum(s["size"] for s in json.loads(Path(big).read_text())["shards"]) >= 10 * limit
    reader = LatentLoader(big, 4, 0, 1, seed=0, cache_dir=str(tmp_path / "c"), cache_limit_gb=limit / 1e9,
                          block_shards=1, backoff_s=0.01)
    n = reader.manifest["num_items"]
    seen = []
    for step, batch in zip(range(2 * n // 4), reader):
        assert _du(tmp_path / "c") <= limit
        seen.append(batch["index"])
    cache = reader.reader.cache
    assert cache.peak_bytes() <= limit and len(cache.downloaded) >= 2 * len(reader.manifest["shards"]) - 8
    assert sorted(torch.cat(seen)[:n].tolist()) == list(range(n))
    with pytest.raises(CacheFullError, match="cache_limit_gb"):  # a limit that cannot hold the blocks is refused
        LatentLoader(big, 4, 0, 1, seed=0, cache_dir=str(tmp_path / "c"), cache_limit_gb=limit / 1e9, block_shards=6)


def _read(args):
    """One reader process: (its batches, the shards it downloaded)."""
    url, cache, rank, world, seed, limit_gb, steps = args
    source = LatentLoader(url, G, rank, world, seed, cache_dir=cache, cache_limit_gb=limit_gb, block_shards=BLOCK,
                          backoff_s=0.01)
    batches = take(source, steps)
    return batches, source.reader.cache.downloaded


@pytest.mark.slow
def test_concurrent_readers_and_two_runs_share_one_node_cache(stream_data, tmp_path):
    url, shard_bytes = stream_data
    other = write_synthetic(str(tmp_path / "other"), 40, SHARD, num_classes=5, seed=1)
    steps = 8
    reference = {(u, seed): take(loader(u, tmp_path / f"ref{seed}", seed=seed), steps)
                 for u, seed in ((url, 3), (other, 4))}
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # spawn: this process has threads
        # Two ranks of one run with room for everything: each shard is downloaded once on the node.
        results = pool.map(_read, [(url, str(tmp_path / "shared"), r, 2, 3, 1.0, steps) for r in range(2)],
                           chunksize=1)
        assert_same(joined([r[0] for r in results]), reference[(url, 3)])
        downloads = [d for r in results for d in r[1]]
        assert len(downloads) == len(set(downloads)) == 15

        # Two runs (on two data sets) at once on a cache that must evict.
        limit = 15 * (shard_bytes + index_file_bytes(SHARD))  # one run needs all 15 shards; both runs need 25
        jobs = [(url, str(tmp_path / "small"), 0, 1, 3, limit / 1e9, steps),
                (other, str(tmp_path / "small"), 0, 1, 4, limit / 1e9, steps)]
        results = pool.map(_read, jobs, chunksize=1)
    assert_same(results[0][0], reference[(url, 3)])
    assert_same(results[1][0], reference[(other, 4)])
    assert ShardCache(str(tmp_path / "small"), limit).peak_bytes() <= limit


def _shard(tmp_path, name, n):
    rng = np.random.default_rng(n)
    samples = [ShardSample(f"{i:09d}", rng.standard_normal((2, 2, 4, 4, 4)).astype(np.float16), 0, "x")
               for i in range(n)]
    record = write_shard(str(tmp_path), name, samples)
    return ShardRef(str(tmp_path / name), record["sha256"], record["size"])


def test_eviction_never_removes_a_pinned_shard(tmp_path):
    refs = [_shard(tmp_path, f"s{i}.tar", 2 + i) for i in range(3)]
    limit = refs[1].size + refs[2].size
    a = ShardCache(str(tmp_path / "cache"), limit)  # two caches on one root behave as two processes
    b = ShardCache(str(tmp_path / "cache"), limit, space_timeout_s=0.3)
    a.pin(refs[0])
    a.pin(refs[1])
    with pytest.raises(CacheFullError, match="pinned by live readers"):
        b.pin(refs[2])
    assert os.path.exists(a.path(refs[0])) and os.path.exists(a.path(refs[1]))
    a.unpin(refs[0])
    b.pin(refs[2])  # now the unpinned shard is evicted to make room
    assert not os.path.exists(a.path(refs[0])) and os.path.exists(a.path(refs[1]))
    assert b.usage_bytes() <= limit and b.peak_bytes() <= limit
    assert b.downloaded == [refs[2].url]


def test_a_pin_never_waits_for_another_readers_pin(tmp_path):
    """Two ranks, each having fetched the shard the other wants and pinning it: neither may wait
    for an exclusive lock the other's pin blocks (they did, forever, each in its own request)."""
    import shutil
    import threading

    ref = _shard(tmp_path, "s0.tar", 3)
    cache = ShardCache(str(tmp_path / "cache"), 10 * ref.size)
    other = os.open(cache._lock_path(ref.sha256), os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_SH)  # another reader's look at the missing shard...
    pinned = threading.Thread(target=cache.pin, args=(ref,), daemon=True)
    pinned.start()
    pinned.join(0.3)
    assert pinned.is_alive()  # the shard is missing and someone holds its lock: not downloaded yet
    shutil.copy(ref.url, cache.path(ref))  # ...that reader fetched it and keeps its pin
    pinned.join(10)
    assert not pinned.is_alive() and cache.pinned() == 1 and cache.downloaded == []
    os.close(other)


def test_index_files_are_written_once_beside_the_shards_and_evicted_with_them(stream_data, tmp_path, monkeypatch):
    url, shard_bytes = stream_data
    reference = take(loader(url, tmp_path / "c"), 8)  # one epoch: every shard downloaded and indexed
    shards = tmp_path / "c" / "shards"
    indexes = sorted(shards.glob("*.index"))
    assert len(indexes) == 15 and {p.stem for p in indexes} == {p.stem for p in shards.glob("*.tar")}

    def parse(*args):
        raise AssertionError("a reader parsed the tar headers although the index file is there")

    monkeypatch.setattr("lamamba.data.reader.index_shard", parse)
    assert_same(take(loader(url, tmp_path / "c"), 8), reference)  # another reader: index files only
    monkeypatch.undo()

    indexes[0].write_bytes(indexes[0].read_bytes()[:-8])  # a damaged index is rebuilt from the tar
    os.remove(indexes[1])  # and a missing one (a shard cached before index files)
    assert_same(take(loader(url, tmp_path / "c"), 8), reference)
    assert len(list(shards.glob("*.index"))) == 15 and indexes[0].stat().st_size == 8 * (4 + 2 * SHARD)

    limit = 8 * shard_bytes  # evicting: each shard leaves with its index, and indexes count to the limit
    small = LatentLoader(url, 4, 0, 1, 3, cache_dir=str(tmp_path / "small"), cache_limit_gb=limit / 1e9,
                         block_shards=1)
    take(small, 16)
    small.close()
    shards, cache = tmp_path / "small" / "shards", small.reader.cache
    assert len(cache.downloaded) > 8
    assert {p.stem for p in shards.glob("*.index")} == {p.stem for p in shards.glob("*.tar")}
    assert cache.usage_bytes() == sum(p.stat().st_size for p in shards.iterdir()) <= limit
    assert cache.peak_bytes() <= limit


def test_paths_from_data_stay_inside_their_folders(stream_data, tmp_path):
    url, _ = stream_data
    data = tmp_path / "data"
    shutil.copytree(Path(url).parent, data)
    manifest = json.loads((data / "manifest.json").read_text())

    escaped = dict(manifest, shards=[dict(manifest["shards"][0], name="../../etc/hostname"), *manifest["shards"][1:]])
    (data / "manifest.json").write_text(json.dumps(escaped))
    with pytest.raises(UnsafePathError, match=r"\.\./\.\./etc/hostname"):
        loader(str(data), tmp_path / "c")

    (data / "evil.tar").write_bytes(_tar_with_member("../../outside.cls"))
    evil = {"name": "evil.tar", "num_items": 1, "size": (data / "evil.tar").stat().st_size,
            "sha256": storage.sha256(str(data / "evil.tar"))}
    (data / "manifest.json").write_text(json.dumps(dict(manifest, shards=[evil], num_items=1)))
    with pytest.raises(UnsafePathError, match=r"outside\.cls"):
        LatentLoader(str(data), 1, 0, 1, seed=0, cache_dir=str(tmp_path / "c"))


def _tar_with_member(name):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"0"))
    return buf.getvalue()


def test_hand_edited_manifest_is_checked_against_what_the_cache_holds(stream_data, tmp_path):
    url, _ = stream_data
    manifest = json.loads(Path(url).read_text())
    loader(url, tmp_path / "c")  # the cache now holds the first step's shards
    edited = tmp_path / "edited"
    shutil.copytree(Path(url).parent, edited)

    (edited / "manifest.json").write_text(json.dumps(dict(manifest, num_items=N + 1)))
    with pytest.raises(ManifestError, match="num_items"):
        loader(str(edited), tmp_path / "c")

    shards = [dict(s, num_items=s["num_items"] + 1) if i == 0 else s for i, s in enumerate(manifest["shards"])]
    (edited / "manifest.json").write_text(json.dumps(dict(manifest, shards=shards, num_items=N + 1)))
    with pytest.raises(ShardError, match="shard-000000.tar.*holds 4 samples.*says 5"):
        take(loader(str(edited), tmp_path / "c"), 8)  # one epoch: every shard is opened


def test_s3_through_a_latency_and_drop_proxy(stream_data, s3_server, flaky_proxy, tmp_path):
    url, _ = stream_data
    options = s3_server.bucket("stream-proxy")
    fs, _ = storage.filesystem("s3://stream-proxy", options)
    fs.put(str(Path(url).parent), "stream-proxy/data", recursive=True)
    proxy = flaky_proxy(s3_server.address, latency_s=0.02, cut_every=3, cut_after=6000)
    via_proxy = dict(options, endpoint_url=proxy.endpoint)
    batches = take(loader("s3://stream-proxy/data", tmp_path / "s3", storage_options=via_proxy), 8)
    assert proxy.cuts > 0  # connections were reset mid-response, and no sample was lost
    assert_same(batches, take(loader(url, tmp_path / "local"), 8))

    data = bytearray(fs.cat_file("stream-proxy/data/shard-000005.tar"))
    data[2000] ^= 0xFF
    fs.pipe_file("stream-proxy/data/shard-000005.tar", bytes(data))
    damaged = loader("s3://stream-proxy/data", tmp_path / "s3-2", storage_options=via_proxy)
    with pytest.raises(ShardError, match="shard-000005.tar.*sha256"):
        take(damaged, 8)
    damaged.close()  # its read-ahead finishes before the proxy goes away
