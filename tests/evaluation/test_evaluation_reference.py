"""Reference batches: ADM .npz files are read (stored statistics used as they are), and a
reference is built from real images in folders, .npz shards and webdataset .tar shards."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from evaluation_fakes import ProjectionExtractor
from lamamba.center_crop import adm_center_crop
from lamamba.evaluation.reference import build_reference, load_reference
from lamamba.evaluation.statistics import FeatureStats


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_adm_centre_crop_halves_then_resizes_then_crops():
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))  # W=64, H=48
    assert adm_center_crop(wide, 16).shape == (16, 16, 3)
    flat = Image.fromarray(np.full((100, 30, 3), 77, dtype=np.uint8))
    np.testing.assert_array_equal(adm_center_crop(flat, 16), 77)


def test_build_reference_from_folder_npz_and_tar(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "real"
    (folder / "class_a").mkdir(parents=True)
    sizes = [(40, 30), (17, 33), (64, 64)]
    originals = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    for i, arr in enumerate(originals):
        (folder / "class_a" / f"img{i}.png").write_bytes(_png(arr))
    np.savez(folder / "shard_0.npz", arr_0=rng.integers(0, 256, size=(3, 20, 20, 3), dtype=np.uint8))
    with tarfile.open(folder / "images-000.tar", "w") as tar:
        for i in range(2):
            data = _png(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8))
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    extractor = ProjectionExtractor()
    out = tmp_path / "refs" / "ref_16.npz"
    ref = build_reference(str(folder), str(out), extractor, resolution=16, batch_size=2)
    assert ref.num_images == 3 + 3 + 2
    stored = np.load(out)
    assert {"mu", "sigma", "mu_s", "sigma_s", "pool_features", "meta"} <= set(stored.files)
    assert "arr_0" not in stored.files

    # sources are read in sorted path order (class_a/*.png, images-000.tar, shard_0.npz), each cropped
    crops = np.stack([adm_center_crop(Image.fromarray(a), 16) for a in originals])
    np.testing.assert_allclose(stored["pool_features"][:3], extractor(crops)["pool"], atol=1e-6)

    # statistics over the first max_images; precision/recall features from a fixed-seed subset
    capped = build_reference(str(folder), str(tmp_path / "capped.npz"), extractor, 16, include_images=True,
                             batch_size=2, max_images=5, pr_images=3)
    again = np.load(build_reference(str(folder), str(tmp_path / "again.npz"), extractor, 16, include_images=True,
                                    batch_size=3, max_images=5, pr_images=3).source)
    assert capped.num_images == 5 and capped.pool_features.shape == (3, 16)
    np.testing.assert_array_equal(again["pool_features"], capped.pool_features)
    assert again["arr_0"].shape == (3, 16, 16, 3)
    np.testing.assert_allclose(capped.pool.mu, stored["pool_features"][:5].astype(np.float64).mean(0), atol=1e-6)

    loaded = load_reference(str(out))  # no images, no extractor needed
    np.testing.assert_allclose(loaded.pool.mu, stored["pool_features"].astype(np.float64).mean(0), atol=1e-6)
    assert loaded.pool_features.shape == (8, 16) and loaded.spatial.mu.shape == (8,)


def test_adm_file_without_statistics_is_computed_from_its_images(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "images_only.npz"
    np.savez(path, arr_0=images)
    extractor = ProjectionExtractor()
    ref = load_reference(str(path), extractor, batch_size=4)
    expected = FeatureStats.of(extractor(images)["pool"]).gaussian()
    np.testing.assert_allclose(ref.pool.sigma, expected.sigma, atol=1e-6)
    with pytest.raises(ValueError, match="no extractor"):
        load_reference(str(path))
    np.savez(tmp_path / "empty.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="arr_0"):
        load_reference(str(tmp_path / "empty.npz"), extractor)


def test_single_adm_sample_batch_is_streamed_and_evaluated(tmp_path):
    from lamamba.config import load_config
    from lamamba.evaluation.config import EvalConfig
    from lamamba.evaluation.evaluator import evaluate
    from lamamba.evaluation.shards import iter_npz_array

    images = np.random.default_rng(3).integers(0, 256, size=(7, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    batches = list(iter_npz_array(str(tmp_path / "samples.npz"), "arr_0", 3))
    assert [len(b) for b in batches] == [3, 3, 1] and np.array_equal(np.concatenate(batches), images)
    result = evaluate(load_config(EvalConfig, None, [
        f"samples={tmp_path / 'samples.npz'}", f"reference={tmp_path / 'ref.npz'}", f"run_dir={tmp_path / 'run'}",
        "extractor.kind=evaluation_fakes:build", "batch_size=3"]))
    assert abs(result["metrics"]["fid"]) < 1e-6 and abs(result["metrics"]["sfid"]) < 1e-6
    assert result["metrics"]["precision"] == result["metrics"]["recall"] == 1.0
    assert (tmp_path / "run" / "metrics.json").exists()
