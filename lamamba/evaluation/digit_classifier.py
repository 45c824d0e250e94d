"""A small convolutional classifier of scikit-learn's 8x8 handwritten digits.

Inception weights cannot be fetched offline, so the quickstart measures its samples in the feature
space of a network trained on the real digits instead: FID and precision/recall on its 128-d
penultimate features, and its predicted labels to check that a class-conditional sample shows the
digit it was conditioned on. It takes images the way the evaluator does, uint8 NHWC, at 8x8 or at
any multiple of it (larger inputs are box-downsampled to 8x8 first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NATIVE_SIZE = 8
NUM_CLASSES = 10


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images (1797, 8, 8, 1) and int64 labels (1797,).

    The data set stores 17 grey levels (0..16); they are spread over 0..255.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 1) with H = W = 8 * k -> float (N, 1, 8, 8) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images))
    if x.dim() != 4 or x.shape[-1] != 1 or x.shape[1] != x.shape[2] or x.shape[1] % NATIVE_SIZE:
        raise ValueError(f"expected grey images (N, 8k, 8k, 1), got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != NATIVE_SIZE:
        x = F.avg_pool2d(x, x.shape[-1] // NATIVE_SIZE)
    return x


class DigitClassifier(nn.Module):
    """conv 3x3 (32) -> conv 3x3 (64) -> 2x2 max-pool -> fc 128 (the features) -> fc 10."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (NATIVE_SIZE // 2) ** 2, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, 8, 8) in [-1, 1] -> logits (N, 10)."""
        return self.head(self.body(x))

    @torch.no_grad()
    def features_and_logits(self, images: np.ndarray | torch.Tensor,
                            batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, 1) -> features (N, 128) float64 and logits (N, 10) float64."""
        self.eval()
        x = to_model_input(images)
        feats, logits = [], []
        for start in range(0, len(x), batch_size):
            f = self.body(x[start:start + batch_size])
            feats.append(f.double())
            logits.append(self.head(f).double())
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()

    def predict(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 images (N, H, W, 1) -> predicted class (N,) int64."""
        return self.features_and_logits(images)[1].argmax(axis=1)


@dataclass
class ClassifierReport:
    """How the classifier was trained and how well it does on digits it never saw."""

    train_size: int
    held_out_size: int
    held_out_accuracy: float


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel and light noise, so that slightly off-centre or noisy
    generated digits are judged by their shape."""
    shifts = torch.randint(-1, 2, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    return x + 0.1 * torch.randn(x.shape, generator=gen)


def train_digit_classifier(images: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                           held_out_fraction: float = 0.25, epochs: int = 40,
                           batch_size: int = 64, lr: float = 2e-3) -> tuple[DigitClassifier, ClassifierReport]:
    """Train on a stratified split of the real digits; report accuracy on the held-out rest.

    images: uint8 (N, 8, 8, 1); labels: (N,) in 0..9. Deterministic for a given seed.
    """
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=held_out_fraction,
                                           random_state=seed, stratify=labels)
    x_train, y_train = to_model_input(images[train_idx]), torch.as_tensor(labels[train_idx])
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(model(_augment(x_train[batch], gen)), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    accuracy = float((model.predict(images[test_idx]) == labels[test_idx]).mean())
    return model.eval(), ClassifierReport(len(train_idx), len(test_idx), accuracy)
