"""Storage URLs: atomic whole-object writes, locally and on an S3 API server."""

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


def test_s3(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "LAMAMBA_S3_ENDPOINT": f"http://{host}:{port}"}.items():
            monkeypatch.setenv(key, value)
        fs, _ = storage.filesystem("s3://core-bucket")
        fs.mkdir("core-bucket")
        roundtrip("s3://core-bucket/store")
    finally:
        server.stop()
