"""Fixtures of the data tests: a generated class-folder image set and small encoded datasets."""

import os

import numpy as np
import pytest
from PIL import Image

from data_pipeline import EncodeConfig, run_encode
from lamamba.config import load_config

def make_image_tree(root, classes=3, per_class=6, seed=0):
    """PNG/JPEG images of varied sizes (some smaller than 32 px) and one corrupt file."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, f"class_{c}")
        os.makedirs(folder)
        for i in range(per_class):
            h, w = [(20, 28), (48, 64), (70, 40), (33, 90)][i % 4]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(os.path.join(folder, f"img_{i}.{ext}"))
    with open(os.path.join(root, "class_1", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory):
    return make_image_tree(str(tmp_path_factory.mktemp("images")))


def _encode(run_dir, *overrides):
    """Run the encode job in this process with the given overrides; returns (config, summary)."""
    cfg = load_config(EncodeConfig, None, [f"run_dir={run_dir}", *overrides])
    return cfg, run_encode(cfg)


@pytest.fixture(scope="session")
def encode():
    """``encode(run_dir, "key=value", ...) -> (EncodeConfig, EncodeSummary)``."""
    return _encode


@pytest.fixture(scope="session")
def tiny_vae_dataset(image_tree, tmp_path_factory):
    """The image tree encoded with the tiny VAE in-process (no Ray): the manifest's folder."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    cfg, _ = _encode(run_dir, f"source.path={image_tree}", "autoencoder.kind=tiny-vae", "resolution=32",
                     "shard_size=4", "ray.num_workers=0")
    return cfg.output_url
