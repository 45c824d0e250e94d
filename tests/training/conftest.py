"""A fixed small dataset for the training tests: sklearn's 8x8 digits encoded (identity
autoencoder) by the data pipeline's own encode job."""

import pytest


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
