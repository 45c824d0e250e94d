"""Image sources: a deterministic listing of (source key, class index) items and a loader.

The listing is what the shard plan is a pure function of, so it is sorted (folder trees) or kept
in file order (list files) and never depends on the filesystem's enumeration order.
"""

from __future__ import annotations

import functools
import io
import posixpath
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data_pipeline.config import SourceConfig
from lamamba import storage

SYNSET = re.compile(r"n\d{8}")
LIST_LINE = re.compile(r"(?P<path>.+?)[\s,]+(?P<label>\d+)\s*")
# The digits split: a stratified 75/25 split of the 1,797 images with a fixed seed.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
DIGITS_PREFIX = "digits/"


class SourceError(ValueError):
    """The source cannot be listed (missing folder, bad list line); the message names it."""


@dataclass(frozen=True)
class SourceItem:
    """One image: ``key`` (path relative to the source root, or ``digits/NNNN``), ``label``, and
    ``url`` (where to read it; empty for digits)."""

    key: str
    label: int
    url: str = ""


@dataclass
class Listing:
    items: list[SourceItem]
    num_classes: int
    class_names: list[str]


def _class_folder_listing(cfg: SourceConfig) -> Listing:
    fs, root = storage.filesystem(cfg.path, cfg.storage_options)
    if not fs.isdir(root):
        raise SourceError(f"source.path={cfg.path!r}: not a folder")
    classes = sorted(posixpath.basename(e["name"].rstrip("/")) for e in fs.ls(root, detail=True)
                     if e["type"] == "directory")
    if not classes:
        raise SourceError(f"source.path={cfg.path!r}: no class folders in it")
    if cfg.kind == "imagenet":
        bad = [c for c in classes if not SYNSET.fullmatch(c)]
        if bad:
            raise SourceError(f"source.path={cfg.path!r}: {bad[0]!r} is not a synset folder (nXXXXXXXX); "
                              "use source.kind=folder for other class-folder trees")
    extensions = tuple(e.lower() for e in cfg.extensions)
    items = []
    for label, name in enumerate(classes):
        for path in sorted(fs.find(posixpath.join(root, name))):
            if path.lower().endswith(extensions):
                rel = posixpath.relpath(path, root)
                items.append(SourceItem(rel, label, storage.join(cfg.path, rel)))
    return Listing(items, len(classes), classes)


def _list_file_listing(cfg: SourceConfig) -> Listing:
    try:
        text = storage.read_bytes(cfg.path, cfg.storage_options).decode()
    except FileNotFoundError:
        raise SourceError(f"source.path={cfg.path!r}: list file not found") from None
    base = cfg.path.rsplit("/", 1)[0] if "/" in cfg.path else "."
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = LIST_LINE.fullmatch(line.strip())
        if not match:
            raise SourceError(f"{cfg.path}:{lineno}: expected 'path label', got {line!r}")
        path = match["path"]
        url = path if ("://" in path or path.startswith("/")) else storage.join(base, path)
        items.append(SourceItem(path, int(match["label"]), url))
    if not items:
        raise SourceError(f"source.path={cfg.path!r}: the list is empty")
    num_classes = max(i.label for i in items) + 1
    return Listing(items, num_classes, [str(c) for c in range(num_classes)])


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (1797, 8, 8) images (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, data.target.astype(np.int64)


def digits_split(split: str) -> np.ndarray:
    """Sorted indices of the digits in ``split`` ("train", "test" or "all")."""
    from sklearn.model_selection import train_test_split

    images, labels = _digits()
    everything = np.arange(len(labels))
    if split == "all":
        return everything
    train, test = train_test_split(everything, test_size=DIGITS_TEST_FRACTION, stratify=labels,
                                   random_state=DIGITS_SPLIT_SEED)
    return np.sort(train if split == "train" else test)


def _digits_listing(cfg: SourceConfig) -> Listing:
    _, labels = _digits()
    items = [SourceItem(f"{DIGITS_PREFIX}{i:04d}", int(labels[i])) for i in digits_split(cfg.split)]
    return Listing(items, 10, [str(c) for c in range(10)])


def list_source(cfg: SourceConfig) -> Listing:
    """The deterministic listing of ``cfg``'s images."""
    if cfg.kind == "digits":
        return _digits_listing(cfg)
    if not cfg.path:
        raise SourceError(f"source.path: required for source.kind={cfg.kind!r}")
    if cfg.kind == "list":
        return _list_file_listing(cfg)
    return _class_folder_listing(cfg)


def load_image(item: SourceItem, storage_options: dict | None = None) -> Image.Image:
    """Read and decode one image (any PIL mode). Unreadable or corrupt files raise OSError/ValueError."""
    if item.key.startswith(DIGITS_PREFIX) and not item.url:
        images, _ = _digits()
        return Image.fromarray(images[int(item.key[len(DIGITS_PREFIX):])], mode="L")
    image = Image.open(io.BytesIO(storage.read_bytes(item.url, storage_options)))
    image.load()  # decode now, so truncated files fail here rather than later
    return image
