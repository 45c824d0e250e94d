"""A small convolutional classifier of scikit-learn's 8x8 handwritten digits.

Inception weights cannot be fetched offline, so the quickstart measures its samples in the feature
space of a network trained on the real digits instead: FID and precision/recall on its 128-d
penultimate features, and its predicted labels to check that a class-conditional sample shows the
digit it was conditioned on. It takes images the way the evaluator does, uint8 NHWC (grey or RGB),
at 8x8 or at any multiple of it (larger inputs are box-downsampled to 8x8 first).

It plugs into the evaluator as ``ExtractorConfig(kind="lamamba.evaluation.digit_classifier:
digit_extractor", weights=<file written by save_digit_classifier>)``: "pool" = the 128-d
features (FID, precision/recall), "spatial" = the conv map pooled to 256-d (sFID), "logits" = the
10-way logits (IS).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NATIVE_SIZE = 8
NUM_CLASSES = 10


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 1 or 3) with H = W = 8 * k -> float (N, 1, 8, 8) in [-1, 1].

    RGB inputs (the evaluator's reference builder makes them) are averaged to grey.
    """
    x = torch.as_tensor(np.asarray(images))
    if x.dim() != 4 or x.shape[-1] not in (1, 3) or x.shape[1] != x.shape[2] or x.shape[1] % NATIVE_SIZE:
        raise ValueError(f"expected images (N, 8k, 8k, 1 or 3), got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().mean(dim=1, keepdim=True) / 127.5 - 1.0
    if x.shape[-1] != NATIVE_SIZE:
        x = F.avg_pool2d(x, x.shape[-1] // NATIVE_SIZE)
    return x


class DigitClassifier(nn.Module):
    """conv 3x3 (32) -> conv 3x3 (64) -> 2x2 max-pool -> fc 128 (the features) -> fc 10."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * (NATIVE_SIZE // 2) ** 2, self.feature_dim), nn.ReLU())
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, 8, 8) in [-1, 1] -> logits (N, 10)."""
        return self.head(self.fc(self.conv(x)))

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 1, 8, 8) -> {"pool": (N, 128), "spatial": (N, 256), "logits": (N, 10)}; spatial is
        the conv map average-pooled to 2x2 (64 x 2 x 2), small enough for a quick Frechet distance."""
        conv = self.conv(x)
        pool = self.fc(conv)
        spatial = F.adaptive_avg_pool2d(conv, 2).flatten(1)
        return {"pool": pool, "spatial": spatial, "logits": self.head(pool)}


class DigitFeatureExtractor:
    """The evaluator's feature-extractor interface around a trained :class:`DigitClassifier`."""

    def __init__(self, model: DigitClassifier, name: str = "digit-classifier", batch_size: int = 1024):
        self.model = model.eval()
        self.name = name
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 images (N, H, W, 1 or 3) -> float32 {"pool", "spatial", "logits"}, each (N, D)."""
        x = to_model_input(images)
        parts = [self.model.extract(x[s:s + self.batch_size]) for s in range(0, len(x), self.batch_size)]
        return {key: torch.cat([p[key] for p in parts]).numpy() for key in parts[0]}

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, 1 or 3) -> the predicted digit (N,) int64."""
        return self(images)["logits"].argmax(axis=1)


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


def train_digit_classifier(train_images: np.ndarray, train_labels: np.ndarray,
                           held_out_images: np.ndarray, held_out_labels: np.ndarray, *, seed: int = 0,
                           epochs: int = 40, batch_size: int = 64,
                           lr: float = 2e-3) -> tuple[DigitClassifier, ClassifierReport]:
    """Train on real digits; report the accuracy on held-out ones it never saw.

    images: uint8 (N, 8k, 8k, 1); labels: (N,) in 0..9. Deterministic for a given seed.
    """
    x_train, y_train = to_model_input(train_images), torch.as_tensor(np.asarray(train_labels))
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
    predicted = DigitFeatureExtractor(model).predict(held_out_images)
    accuracy = float((predicted == np.asarray(held_out_labels)).mean())
    return model.eval(), ClassifierReport(len(train_labels), len(held_out_labels), accuracy)


def save_digit_classifier(path: str, model: DigitClassifier, report: ClassifierReport) -> None:
    """Write the weights (safetensors) with the training report in the metadata."""
    from safetensors.torch import save

    from lamamba import storage

    blob = save({k: v.contiguous() for k, v in model.state_dict().items()},
                metadata={"report": json.dumps(asdict(report))})
    storage.write_bytes(path, blob)


def load_digit_classifier(path: str) -> tuple[DigitClassifier, ClassifierReport]:
    """Read what :func:`save_digit_classifier` wrote; a missing or mismatching file is an error
    naming it."""
    from safetensors.torch import load

    from lamamba import storage

    if not path or not storage.exists(path):
        raise FileNotFoundError(f"digit classifier weights not found: {path!r} (the quickstart writes them)")
    blob = storage.read_bytes(path)
    model = DigitClassifier()
    try:
        model.load_state_dict(load(blob))
        # safetensors layout: an 8-byte little-endian header length, then the JSON header.
        header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
        report = ClassifierReport(**json.loads(header["__metadata__"]["report"]))
    except Exception as err:  # safetensors' own error for a malformed file, or a state-dict mismatch
        raise ValueError(f"{path} does not hold digit classifier weights: {err}") from None
    return model.eval(), report


def digit_extractor(cfg) -> DigitFeatureExtractor:
    """The evaluator's plug-in factory: ``cfg`` is an ``ExtractorConfig`` whose ``weights`` names
    the classifier file."""
    model, report = load_digit_classifier(cfg.weights)
    name = f"digit-classifier ({cfg.weights}, held-out accuracy {report.held_out_accuracy:.3f})"
    return DigitFeatureExtractor(model, name=name, batch_size=max(cfg.batch_size, 1))
