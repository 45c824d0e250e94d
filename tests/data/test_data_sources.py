"""Sources, ADM preprocessing and the autoencoders."""

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.config import SourceConfig
from data_pipeline.preprocess import to_model_input
from data_pipeline.sources import SourceError, list_source, load_image
from lamamba.autoencoders import AutoencoderConfig, build_autoencoder, tiny_vae
from lamamba.center_crop import adm_center_crop


def test_adm_crop_takes_the_centre_and_upsamples_small_images():
    stripes = np.zeros((32, 96), dtype=np.uint8)
    stripes[:, 32:64] = 255
    crop = adm_center_crop(Image.fromarray(stripes), 32)
    assert crop.shape == (32, 32) and crop.min() == 255
    big = adm_center_crop(Image.new("RGB", (300, 200), (10, 200, 30)), 32)  # box-halved twice, then bicubic
    assert big.shape == (32, 32, 3) and np.abs(big.astype(int) - [10, 200, 30]).max() <= 1
    small = to_model_input(Image.new("RGB", (20, 28), (255, 0, 127)), 32, 3)
    assert small.shape == (3, 32, 32) and small.dtype == torch.float32
    torch.testing.assert_close(small[:, 16, 16], torch.tensor([1.0, -1.0, 127 / 127.5 - 1]))


def test_imagenet_layout_and_list_file(tmp_path):
    for synset in ("n00000002", "n00000001"):
        (tmp_path / "train" / synset).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "train" / synset / f"{synset}_{i}.JPEG")
    (tmp_path / "train" / "n00000001" / "notes.txt").write_text("not an image")
    listing = list_source(SourceConfig(kind="imagenet", path=str(tmp_path / "train")))
    assert listing.class_names == ["n00000001", "n00000002"]
    assert [(i.key, i.label) for i in listing.items] == [
        ("n00000001/n00000001_0.JPEG", 0), ("n00000001/n00000001_1.JPEG", 0),
        ("n00000002/n00000002_0.JPEG", 1), ("n00000002/n00000002_1.JPEG", 1)]
    assert load_image(listing.items[0]).size == (8, 8)

    (tmp_path / "train" / "extra").mkdir()
    with pytest.raises(SourceError, match="'extra' is not a synset"):
        list_source(SourceConfig(kind="imagenet", path=str(tmp_path / "train")))

    lst = tmp_path / "list.txt"
    lst.write_text("# path label\ntrain/n00000002/n00000002_1.JPEG 7\ntrain/n00000001/n00000001_0.JPEG,3\n")
    listing = list_source(SourceConfig(kind="list", path=str(lst)))
    assert [(i.key, i.label) for i in listing.items] == [("train/n00000002/n00000002_1.JPEG", 7),
                                                         ("train/n00000001/n00000001_0.JPEG", 3)]
    assert listing.num_classes == 8 and load_image(listing.items[1]).size == (8, 8)
    lst.write_text("a.jpg 1\nno-label-here\n")
    with pytest.raises(SourceError, match="list.txt:2"):
        list_source(SourceConfig(kind="list", path=str(lst)))


def test_autoencoders(tmp_path):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    tiny = build_autoencoder(AutoencoderConfig(kind="tiny-vae"))
    mean, logvar = tiny.encode_moments(images)
    assert mean.shape == logvar.shape == (2, 4, 4, 4) and (tiny.downsample, tiny.latent_channels) == (8, 4)
    assert tiny.decode(mean).shape == (2, 3, 32, 32) and tiny.scale_factor == pytest.approx(0.18215)
    torch.testing.assert_close(build_autoencoder(AutoencoderConfig(kind="tiny-vae")).encode_moments(images)[0], mean)

    # "sd-vae" loads any diffusers AutoencoderKL directory (here the tiny one saved to disk).
    tiny_vae().save_pretrained(tmp_path / "vae")
    loaded = build_autoencoder(AutoencoderConfig(kind="sd-vae", path_or_id=str(tmp_path / "vae")))
    torch.testing.assert_close(loaded.encode_moments(images)[0], mean)
    assert loaded.dtype == torch.float32 and loaded.name == f"sd-vae:{tmp_path / 'vae'}"
    with pytest.raises(FileNotFoundError, match="path_or_id"):
        build_autoencoder(AutoencoderConfig(kind="sd-vae", path_or_id=str(tmp_path / "missing")))

    identity = build_autoencoder(AutoencoderConfig(kind="identity", image_channels=1))
    gray = images[:, :1]
    mean, logvar = identity.encode_moments(gray)
    assert torch.equal(mean, gray) and torch.exp(0.5 * logvar).max() == 0
    assert (identity.scale_factor, identity.downsample, identity.latent_channels) == (1.0, 1, 1)
    assert identity.decode(gray * 3).abs().max() == 1
    with pytest.raises(ValueError, match="expected images"):
        identity.encode_moments(images)


def test_high_bit_depth_images_are_scaled_or_skipped_and_listed(tmp_path, encode):
    """16-bit PNGs used to be clipped at 255 by PIL's convert (a mid-grey gradient came out ~98 %
    white); now they are scaled, and modes without a known range are skipped and listed."""
    import json

    folder = tmp_path / "images" / "class_0"
    folder.mkdir(parents=True)
    gradient = (np.arange(16 * 16, dtype=np.float64).reshape(16, 16) * (65535 / 255)).astype(np.uint16)
    Image.fromarray(gradient).save(folder / "gray16.png")  # opens as mode "I;16"
    Image.fromarray(gradient.astype(np.int32) * 2 + 70000).save(folder / "int32.tif")  # "I", out of range
    Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(folder / "float.tif")  # "F"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(folder / "rgb8.png")

    item = list_source(SourceConfig(kind="folder", path=str(tmp_path / "images"))).items
    by_name = {i.key.rsplit("/", 1)[-1]: i for i in item}
    image = load_image(by_name["gray16.png"])
    assert image.mode.startswith("I;16")
    x = to_model_input(image, 16, 1)[0].double()
    expected = torch.from_numpy(np.round(gradient / 65535 * 255) / 127.5 - 1.0)
    assert torch.allclose(x, expected, atol=1e-6)
    assert (x > 0.99).double().mean() < 0.05  # not clipped to white
    assert torch.allclose(to_model_input(load_image(by_name["rgb8.png"]), 16, 3), torch.tensor(90 / 127.5 - 1.0))

    cfg, summary = encode(tmp_path / "run", f"source.path={tmp_path / 'images'}", "autoencoder.kind=identity",
                          "autoencoder.image_channels=1", "resolution=16", "ray.num_workers=0")
    manifest = json.loads((tmp_path / "run" / "latents" / "manifest.json").read_text())
    assert manifest["num_items"] == 2 and summary.skipped_images == 2
    skipped = {s["key"].rsplit("/", 1)[-1]: s["error"] for s in manifest["skipped"]}
    assert "'F'" in skipped["float.tif"] and "not 16-bit" in skipped["int32.tif"]
