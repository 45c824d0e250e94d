"""A small feature extractor for tests where the Inception structure is not under test: it keeps
the evaluator's interface (uint8 NHWC -> pool / spatial / logits) with 16/8/10-d outputs, so the
2048-d matrix square roots do not dominate the test time."""

import numpy as np


class ProjectionExtractor:
    name = "test-projection"

    def __init__(self, cfg=None):
        rng = np.random.default_rng(0)
        self.pool_w = rng.normal(size=(48, 16))
        self.spatial_w = rng.normal(size=(48, 8))
        self.logit_w = rng.normal(size=(16, 10))

    def __call__(self, images):
        b, h, w, c = images.shape
        x = images.astype(np.float64) / 255.0
        x = x.reshape(b, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4))[..., :3]  # 4x4 grid, 3 channels
        x = x.reshape(b, 48)
        pool = np.tanh(x @ self.pool_w)
        return {"pool": pool.astype(np.float32), "spatial": np.tanh(x @ self.spatial_w).astype(np.float32),
                "logits": (pool @ self.logit_w).astype(np.float32)}


def build(cfg):
    return ProjectionExtractor(cfg)
