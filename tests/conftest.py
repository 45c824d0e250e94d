"""Shared test setup: offline hubs, no Ray telemetry, one intra-op thread per test process."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tests' tensors are small: on a 2-core machine shared with Ray workers and torchrun ranks,
    torch's spin-waiting thread pool makes them several times slower, not faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class S3Server:
    """A real S3 API server (moto) on a free loopback port, shared by the whole test session."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        # s3fs storage options; the same values as environment variables for code that reads them.
        self.options = {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}
        self.env = {"LAMAMBA_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def bucket(self, name: str) -> dict:
        """Create bucket ``name`` (names are per test, >= 3 characters); returns the storage options."""
        from lamamba import storage

        fs, _ = storage.filesystem(f"s3://{name}", self.options)
        fs.mkdir(name)
        return dict(self.options)

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


# A fixed small dataset for the training and experiment tests: sklearn's 8x8 digits encoded
# (identity autoencoder) by the data pipeline's own encode job.
@pytest.fixture(scope="session")
def digits_manifest(tmp_path_factory) -> str:
    from data_pipeline.config import EncodeConfig, RayConfig, SourceConfig
    from data_pipeline.job import run_encode
    from lamamba.autoencoders import AutoencoderConfig

    root = tmp_path_factory.mktemp("digits-latents")
    cfg = EncodeConfig(run_dir=str(root), resolution=8, shard_size=512, batch_size=512,
                       source=SourceConfig(kind="digits", split="train"),
                       autoencoder=AutoencoderConfig(kind="identity", image_channels=1), ray=RayConfig(num_workers=0))
    return run_encode(cfg).manifest_url
