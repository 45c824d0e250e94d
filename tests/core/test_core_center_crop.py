"""One ADM centre crop: it is ADM's ``center_crop_arr``, and the training data (encode) and the FID
reference built from real images get identical pixels from the same image."""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.preprocess import to_model_input
from lamamba.center_crop import CROP_METHOD, adm_center_crop
from lamamba.evaluation.reference import iter_real_images


def adm_center_crop_arr(pil_image, image_size):
    """ADM's guided_diffusion/image_datasets.py center_crop_arr, written out again."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


@pytest.mark.parametrize("height,width,size", [(389, 517, 64), (64, 200, 64), (30, 45, 64), (100, 100, 32)])
def test_it_is_adms_center_crop_arr(height, width, size):
    image = Image.fromarray(np.random.default_rng(height).integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    np.testing.assert_array_equal(adm_center_crop(image, size), adm_center_crop_arr(image, size))


def test_training_data_and_reference_crop_identically(tmp_path):
    rng = np.random.default_rng(7)
    shapes = [(389, 517), (200, 64), (30, 45)]  # halved twice, bicubic down, bicubic up
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]
    folder = tmp_path / "real" / "class_a"
    folder.mkdir(parents=True)
    for i, arr in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        (folder / f"img{i}.png").write_bytes(buf.getvalue())
    size = 32
    reference = np.concatenate(list(iter_real_images(str(tmp_path / "real"), size, batch_size=2)))
    encoded = np.stack([to_model_input(Image.fromarray(arr), size, 3).numpy() for arr in images])
    # the encoder's input is the same uint8 crop, scaled to [-1, 1]
    np.testing.assert_array_equal(reference.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0, encoded)
    assert CROP_METHOD == "adm_center_crop"


def test_grey_reference_images_are_cropped_like_rgb_ones(tmp_path):
    grey = np.random.default_rng(8).integers(0, 256, size=(2, 90, 70, 1), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", arr_0=grey)
    got = np.concatenate(list(iter_real_images(str(tmp_path / "grey.npz"), 16)))
    want = np.stack([adm_center_crop(Image.fromarray(g[..., 0]).convert("RGB"), 16) for g in grey])
    np.testing.assert_array_equal(got, want)
