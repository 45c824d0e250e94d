"""Reference batches: what generated samples are compared against.

ADM publishes one .npz per resolution (``VIRTUAL_imagenet256_labeled.npz``, ...) holding the
reference images ``arr_0`` (N, H, W, 3) uint8 and the Inception statistics ``mu``, ``sigma``
(pool_3) and ``mu_s``, ``sigma_s`` (spatial). FID/sFID use the stored statistics; precision and
recall need the reference's pool_3 features, computed from ``arr_0``.

There is no published reference at 1024 px, so :func:`build_reference` makes one with the same
pipeline from real images at any resolution: an image folder, .npz shards (``arr_0``) or
webdataset .tar shards of encoded images, each ADM-centre-cropped to the target resolution. It
writes the same keys (``arr_0`` optional, since 50K x 1024^2 images is 150 GB) plus
``pool_features`` so precision/recall do not need the images.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from lamamba import storage
from lamamba.center_crop import CROP_METHOD, adm_center_crop
from lamamba.evaluation.features import FeatureExtractor
from lamamba.evaluation.shards import iter_npz_array, npz_array_length, npz_keys, read_npz, write_npz
from lamamba.evaluation.statistics import FeatureStats, GaussianStats, accumulate

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".JPEG")
_STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


@dataclass
class Reference:
    """Statistics and features of a reference set.

    pool: pool_3 Gaussian (FID); spatial: spatial Gaussian (sFID) or None; pool_features:
    (N, D) features for precision/recall or None; source: where it came from.
    """

    pool: GaussianStats
    spatial: GaussianStats | None
    pool_features: np.ndarray | None
    source: str
    num_images: int | None = None


def load_reference(url: str, extractor: FeatureExtractor | None = None, batch_size: int = 500) -> Reference:
    """Read an ADM reference .npz (or one written by :func:`build_reference`).

    Stored ``mu``/``sigma`` (and ``mu_s``/``sigma_s``) are used as they are, as ADM's evaluator
    does; features for precision/recall come from ``pool_features`` if stored, else from running
    ``extractor`` over ``arr_0``. Missing pieces raise ValueError naming the file and its keys.
    """
    data = read_npz(url, skip=("arr_0",))
    has_images = "arr_0" in npz_keys(url)
    keys = sorted([*data, *(["arr_0"] if has_images else [])])
    pool_features = data.get("pool_features")
    computed: dict[str, np.ndarray] | None = None
    if pool_features is None or "mu" not in data:
        if not has_images:
            raise ValueError(f"reference {url}: needs mu/sigma and pool_features, or images arr_0; has {keys}")
        if extractor is None:
            raise ValueError(f"reference {url}: its features must be computed from arr_0, but no extractor was given")
        computed = extract_features(iter_npz_array(url, "arr_0", batch_size), extractor,
                                    total=npz_array_length(url, "arr_0"), desc="reference features")
        pool_features = computed["pool"]

    def stats(mu_key: str, sigma_key: str, feature_key: str) -> GaussianStats | None:
        if mu_key in data and sigma_key in data:
            return GaussianStats(data[mu_key].astype(np.float64), data[sigma_key].astype(np.float64))
        if computed is not None and feature_key in computed:
            return FeatureStats.of(computed[feature_key]).gaussian()
        return None

    pool = stats("mu", "sigma", "pool")
    if pool is None:
        raise ValueError(f"reference {url}: no pool_3 statistics (mu, sigma) and none computable; has {keys}")
    n = npz_array_length(url, "arr_0") if has_images else (len(pool_features) if pool_features is not None else None)
    return Reference(pool, stats("mu_s", "sigma_s", "spatial"), pool_features, url, n)


def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def extract_features(batches, extractor: FeatureExtractor, total: int | None = None,
                     desc: str = "features") -> dict[str, np.ndarray]:
    """Run ``extractor`` over an iterable of uint8 NHWC batches; concatenated outputs per key."""
    out: dict[str, list[np.ndarray]] = {}
    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True) as bar:
        for batch in batches:
            for key, value in extractor(batch).items():
                out.setdefault(key, []).append(value)
            bar.update(len(batch))
    if not out:
        raise ValueError(f"{desc}: no images")
    return {key: np.concatenate(v) for key, v in out.items()}


def _decode(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return adm_center_crop(image.convert("RGB"), size)


def _fit(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size) and images.shape[-1] == 3:
        return images
    return np.stack([adm_center_crop(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).convert("RGB"),
                                     size) for im in images])


def iter_real_images(source: str, resolution: int, batch_size: int = 100) -> Iterator[np.ndarray]:
    """Batches (b, resolution, resolution, 3) uint8 from real images under ``source`` (local path
    or URL): a folder of image files (searched recursively, sorted), .npz files with ``arr_0``,
    or webdataset .tar shards whose members are encoded images."""
    fs, root = storage.filesystem(source)
    if fs.isfile(root):
        files = [root]
    else:
        files = sorted(p for p in fs.find(root) if p.endswith(IMAGE_EXTENSIONS + (".npz", ".tar")))
    if not files:
        raise ValueError(f"no images, .npz or .tar shards under {source}")
    pending: list[np.ndarray] = []
    for path in files:
        if path.endswith(".npz"):
            with fs.open(path, "rb") as f, np.load(io.BytesIO(f.read())) as arrays:
                if "arr_0" not in arrays.files:
                    raise ValueError(f"{path}: no arr_0 (keys: {arrays.files})")
                for chunk in _batches(arrays["arr_0"], batch_size):
                    pending.extend(_fit(chunk, resolution))
        elif path.endswith(".tar"):
            with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(IMAGE_EXTENSIONS):
                        pending.append(_decode(tar.extractfile(member).read(), resolution))
        else:
            with fs.open(path, "rb") as f:
                pending.append(_decode(f.read(), resolution))
        while len(pending) >= batch_size:
            yield np.stack(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        yield np.stack(pending)


class _Reservoir:
    """A uniform random subset of fixed size from a stream (Algorithm R, fixed seed): the same
    stream always keeps the same items."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seen, self.items = size, 0, []
        self.rng = np.random.default_rng(seed)

    def add(self, item) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = int(self.rng.integers(0, self.seen + 1))
            if j < self.size:
                self.items[j] = item
        self.seen += 1


def build_reference(source: str, out: str, extractor: FeatureExtractor, resolution: int,
                    include_images: bool = False, batch_size: int = 100, max_images: int = 0,
                    pr_images: int = 10000) -> Reference:
    """Build a reference .npz at ``out`` from the real images under ``source``.

    FID/sFID statistics cover every image (or the first ``max_images``); ``pool_features`` (and,
    if ``include_images``, ``arr_0``) hold a fixed-seed uniform subset of ``pr_images`` of them for
    precision/recall. Writes mu, sigma, mu_s, sigma_s (when the extractor gives spatial features),
    pool_features, arr_0 and a JSON ``meta``.
    """
    pool_stats = spatial_stats = None
    subset = _Reservoir(pr_images)
    with tqdm(desc=f"reference from {source}", unit="img", dynamic_ncols=True) as bar:
        for batch in iter_real_images(source, resolution, batch_size):
            if max_images:
                batch = batch[:max_images - (pool_stats.n if pool_stats else 0)]
            feats = extractor(batch)
            pool_stats = accumulate(pool_stats, feats["pool"])
            spatial_stats = accumulate(spatial_stats, feats.get("spatial"))
            for i in range(len(batch)):
                subset.add((feats["pool"][i].astype(np.float32), batch[i] if include_images else None))
            bar.update(len(batch))
            if max_images and pool_stats.n >= max_images:
                break
    if pool_stats is None:
        raise ValueError(f"no images under {source}")
    pool = pool_stats.gaussian()
    arrays = {"mu": pool.mu, "sigma": pool.sigma, "pool_features": np.stack([f for f, _ in subset.items])}
    spatial = spatial_stats.gaussian() if spatial_stats is not None else None
    if spatial is not None:
        arrays.update(mu_s=spatial.mu, sigma_s=spatial.sigma)
    if include_images:
        arrays["arr_0"] = np.stack([im for _, im in subset.items])
    meta = {"source": source, "resolution": resolution, "num_images": pool_stats.n,
            "pr_images": len(subset.items), "extractor": getattr(extractor, "name", type(extractor).__name__),
            "crop": CROP_METHOD}
    arrays["meta"] = np.array(json.dumps(meta))
    write_npz(out, **arrays)
    return Reference(pool, spatial, arrays["pool_features"], out, pool_stats.n)

