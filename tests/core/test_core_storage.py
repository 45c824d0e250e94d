"""Storage URLs: atomic whole-object writes, locally and on an S3 API server."""

import os

import pytest

from lamamba import storage


def roundtrip(root):
    storage.makedirs(root)
    storage.write_bytes(storage.join(root, "a", "x.bin"), b"one")
    storage.write_bytes(storage.join(root, "a", "x.bin"), b"two")
    assert storage.read_bytes(storage.join(root, "a", "x.bin")) == b"two"
    assert storage.listdir(storage.join(root, "a")) == ["x.bin"]
    assert storage.exists(storage.join(root, "a", "x.bin"))
    storage.remove(storage.join(root, "a"), recursive=True)
    assert not storage.exists(storage.join(root, "a", "x.bin"))
    assert storage.listdir(storage.join(root, "missing")) == []


def test_local(tmp_path):
    roundtrip(str(tmp_path / "store"))
    assert not list((tmp_path / "store").rglob("*.tmp-*"))


def test_s3(monkeypatch, s3_server):
    for key, value in s3_server.env.items():  # credentials and endpoint from the environment
        monkeypatch.setenv(key, value)
    s3_server.bucket("core-bucket")
    roundtrip("s3://core-bucket/store")


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/hostname", "", "a//b", "a/b/.."])
def test_safe_join_refuses_paths_leaving_the_root(tmp_path, name):
    with pytest.raises(storage.UnsafePathError, match="manifest shard"):
        storage.safe_join(str(tmp_path), name, what="manifest shard")


def test_safe_join_keeps_plain_relative_paths(tmp_path):
    assert storage.safe_join(str(tmp_path), "a/b.tar") == str(tmp_path / "a" / "b.tar")
    assert storage.safe_join("s3://bkt/runs", "ckpt/step_1/x.pt") == "s3://bkt/runs/ckpt/step_1/x.pt"


def test_sha256_streams_a_file(tmp_path):
    import hashlib
    data = os.urandom((1 << 22) + 17)
    (tmp_path / "f").write_bytes(data)
    assert storage.sha256(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()
