"""Storage URLs: atomic whole-object writes, locally and on an S3 API server."""

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
