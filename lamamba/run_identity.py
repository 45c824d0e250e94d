"""Which settings make a run what it is, and which may change when it continues.

A run (a training run, an encode job's data set, a sample set) continues across submissions,
requeues and restarts as long as its *identity* is unchanged. Each job's config class lists in
``CONTINUATION_KEYS`` the dotted keys (or whole sections) that may change between two
submissions of the same run: how long it runs, how often it logs, checkpoints or draws sample
grids, how many workers it uses. ``run_dir`` and every ``storage_options`` or credential-like key
(see :func:`lamamba.config.redacted`) are never part of the identity either: they say where and
with which access the run reads and writes, not what it computes, so rotating a key or moving an
endpoint keeps the run. The launcher derives run ids from :func:`identity_hash`; the trainer
refuses to resume a checkpoint whose identity differs (:func:`identity_changes`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lamamba.config import SECRET_WORDS, to_dict

ACCESS_KEYS = ("run_dir", "storage_options")
_MISSING = object()


def _is_access(key: str) -> bool:
    name = key.rsplit(".", 1)[-1].lower()
    return name in ACCESS_KEYS or any(w in name for w in SECRET_WORDS)


def _covered(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if _is_access(dotted):
            continue
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (access keys excluded)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


def identity(cfg: Any) -> dict[str, Any]:
    """The dotted identity keys of a config (a dataclass with ``CONTINUATION_KEYS``) and their values."""
    continuation = tuple(getattr(cfg, "CONTINUATION_KEYS", ()))
    return {k: v for k, v in _flatten(to_dict(cfg)).items() if not _covered(k, continuation)}


def identity_hash(cfg: Any) -> str:
    """A short, stable hash of :func:`identity` (what run ids are derived from)."""
    blob = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def identity_changes(old: dict[str, Any], new: dict[str, Any], cfg_class: type) -> tuple[list[str], list[str]]:
    """(identity keys that differ, continuation keys that differ) between two config dicts of ``cfg_class``."""
    continuation = tuple(getattr(cfg_class, "CONTINUATION_KEYS", ()))
    changed = changed_keys(old, new)
    return ([k for k in changed if not _covered(k, continuation)],
            [k for k in changed if _covered(k, continuation)])
