"""The quickstart's own pieces: digit classifier, sample grid, config wiring (fast, no training)."""

import json

import numpy as np
import pytest

from lamamba.config import ConfigError
from lamamba.evaluation.config import ExtractorConfig
from lamamba.evaluation.digit_classifier import (ClassifierReport, DigitClassifier, DigitFeatureExtractor,
                                                 digit_extractor, load_digit_classifier, save_digit_classifier,
                                                 train_digit_classifier)
from lamamba.evaluation.features import build_extractor
from launcher.quickstart import load_quickstart_config
from launcher.quickstart.pipeline import Paths, _connect, real_digits
from launcher.quickstart.report import sample_grid, write_metrics


@pytest.fixture(scope="module")
def digits():
    return real_digits("train"), real_digits("test")


@pytest.fixture(scope="module")
def trained(digits):
    (xtr, ytr), (xte, yte) = digits
    return train_digit_classifier(xtr, ytr, xte, yte, seed=0, epochs=8)


def test_real_digits_are_the_encode_jobs_split(digits):
    (xtr, ytr), (xte, yte) = digits
    assert xtr.shape == (1347, 8, 8, 1) and xte.shape == (450, 8, 8, 1)
    assert xtr.dtype == np.uint8 and xtr.max() == 255
    assert sorted(np.unique(ytr)) == list(range(10))


def test_classifier_recognises_held_out_digits(trained, digits):
    model, report = trained
    assert report.held_out_accuracy >= 0.9
    (_, _), (xte, yte) = digits
    extractor = DigitFeatureExtractor(model)
    # Upsampled (16x16) and RGB inputs are read the same way as the native 8x8 grey digits.
    big = np.repeat(np.repeat(xte, 2, axis=1), 2, axis=2)
    assert np.mean(extractor.predict(big) == yte) >= 0.9
    assert np.mean(extractor.predict(np.repeat(xte, 3, axis=-1)) == yte) >= 0.9


def test_classifier_training_is_deterministic(digits):
    (xtr, ytr), (xte, yte) = digits
    a = train_digit_classifier(xtr[:200], ytr[:200], xte, yte, seed=3, epochs=1)[0]
    b = train_digit_classifier(xtr[:200], ytr[:200], xte, yte, seed=3, epochs=1)[0]
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert np.array_equal(pa.numpy(), pb.numpy()), name


def test_extractor_plugs_into_the_evaluator(trained, digits, tmp_path):
    model, report = trained
    path = str(tmp_path / "clf.safetensors")
    save_digit_classifier(path, model, report)
    loaded, loaded_report = load_digit_classifier(path)
    assert loaded_report == report
    extractor = build_extractor(ExtractorConfig(kind="lamamba.evaluation.digit_classifier:digit_extractor",
                                                weights=path, device="cpu"))
    (xtr, _), _ = digits
    feats = extractor(xtr[:7])
    assert {k: v.shape for k, v in feats.items()} == {"pool": (7, 128), "spatial": (7, 256), "logits": (7, 10)}
    assert all(v.dtype == np.float32 for v in feats.values())
    np.testing.assert_allclose(feats["logits"], DigitFeatureExtractor(model)(xtr[:7])["logits"], rtol=1e-6)
    assert "held-out accuracy" in extractor.name


def test_missing_or_wrong_classifier_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        digit_extractor(ExtractorConfig(weights=str(tmp_path / "nope.safetensors")))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_digit_classifier(str(bad))


def test_sample_grid_has_a_row_per_class_and_marks_misreadings():
    images = np.zeros((30, 8, 8, 1), np.uint8)
    labels = np.arange(30) % 10
    predicted = labels.copy()
    predicted[3] = 4  # sample 3 (class 3, first column) misread
    grid = np.asarray(sample_grid(images, labels, predicted, num_classes=10, per_class=3, cell=20))
    gap = 2
    assert grid.shape == (gap + 10 * (20 + gap), gap + 3 * (20 + gap), 3)
    top_left = lambda row, col: tuple(grid[gap + row * 22, gap + col * 22])  # noqa: E731 - the frame pixel
    assert top_left(3, 0) == (210, 40, 40)
    assert top_left(3, 1) == (40, 170, 60) and top_left(0, 0) == (40, 170, 60)


def test_metrics_json_replaces_non_finite(tmp_path):
    write_metrics(tmp_path / "m.json", {"fid": float("nan"), "sample_accuracy": 0.9})
    assert json.loads((tmp_path / "m.json").read_text()) == {"fid": None, "sample_accuracy": 0.9}


def test_default_config_loads_and_stages_are_connected(tmp_path):
    cfg = load_quickstart_config(None, ["train.max_steps=7", f"run_dir={tmp_path}"])
    wired = _connect(cfg, Paths(tmp_path))
    assert wired.encode.output == str(tmp_path / "shards")
    assert wired.train.data.manifest == str(tmp_path / "shards" / "manifest.json")
    assert wired.sample.checkpoint == str(tmp_path / "train" / "checkpoints" / "step_00000007")
    assert wired.sample.noise_schedule == wired.train.diffusion.noise_schedule
    assert wired.evaluate.extractor.weights == str(tmp_path / "classifier" / "digit_classifier.safetensors")
    assert wired.train.model.input_size == wired.encode.resolution


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.modle"):
        load_quickstart_config(None, ["train.modle.preset=S"])
    with pytest.raises(ConfigError, match="not_here.yaml"):
        load_quickstart_config("not_here.yaml", [])


def test_digits_are_encoded_without_mirrored_copies(digits):
    """A mirrored 3, 5 or 7 is not that digit: with encode flip=false the reader's flip slot
    repeats the image, so training never sees mirrored digits."""
    import torch

    from data_pipeline.writer import encode_images
    from lamamba.autoencoders import AutoencoderConfig, build_autoencoder

    (xtr, _), _ = digits
    images = torch.from_numpy(xtr[:5]).permute(0, 3, 1, 2).float() / 127.5 - 1
    encoder = build_autoencoder(AutoencoderConfig(kind="identity", image_channels=1), "cpu")
    plain = encode_images(encoder, images, batch_size=4, flip=False)
    assert np.array_equal(plain[:, 1], plain[:, 0])
    mirrored = encode_images(encoder, images, batch_size=4)
    assert np.array_equal(mirrored[:, 1, 0], mirrored[:, 0, 0][..., ::-1])
    assert load_quickstart_config(None, []).encode.flip is False


def test_a_weak_classifier_stops_the_run_before_training(tmp_path, capsys):
    from launcher.quickstart import run_quickstart

    cfg = load_quickstart_config(None, [f"run_dir={tmp_path}", "classifier.epochs=1", "ray_cpus=1",
                                        "classifier.min_held_out_accuracy=1.01"])
    with pytest.raises(RuntimeError, match="classifier.min_held_out_accuracy"):
        run_quickstart(cfg)
    assert "[1/6] classifier FAILED" in capsys.readouterr().out
    assert not (tmp_path / "shards").exists() and not (tmp_path / "train").exists()
