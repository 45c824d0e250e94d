"""Typed configs: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every job (encode, train, sample, evaluate) describes its settings as a tree of dataclasses.
``load_config(TrainConfig, "configs/train/s_256.yaml", ["optim.lr=2e-4"])`` reads the YAML,
applies the overrides and builds the tree, checking every key and type on the way: an unknown
key or a wrong type raises :class:`ConfigError` naming the dotted key, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


SECRET_WORDS = ("key", "secret", "token", "password", "credential")
# Credentials the launcher hands to a job's processes through their environment instead of a file:
# JSON {config class name: {dotted key: value}}, applied by load_config after the overrides.
SECRETS_ENV = "LAMAMBA_CONFIG_SECRETS"


def _is_secret(key: Any, value: Any) -> bool:
    return any(w in str(key).lower() for w in SECRET_WORDS) and not isinstance(value, dict)


def redacted(data: Any) -> Any:
    """``data`` (a config dict, nested) with every value under a credential-like key replaced by
    ``"<redacted>"``: what config.yaml files, logs and status output may show."""
    if not isinstance(data, dict):
        return data
    return {k: "<redacted>" if _is_secret(k, v) else redacted(v) for k, v in data.items()}


def secret_values(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The dotted keys and values of a config dict that :func:`redacted` hides."""
    found = {}
    for key, value in data.items():
        if _is_secret(key, value):
            found[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            found.update(secret_values(value, f"{prefix}{key}."))
    return found


def without_secrets(data: Any) -> Any:
    """``data`` with the keys :func:`redacted` hides left out (a job loading it falls back to its
    environment's credentials, or to those in :data:`SECRETS_ENV`)."""
    if not isinstance(data, dict):
        return data
    return {k: without_secrets(v) for k, v in data.items() if not _is_secret(k, v)}


def check_at_least(cfg: Any, minimums: dict[str, float]) -> None:
    """For a config's ``__post_init__``: raise ValueError naming the first field of ``cfg`` below
    its minimum (``from_dict`` adds the dotted prefix)."""
    for name, low in minimums.items():
        if getattr(cfg, name) < low:
            raise ValueError(f"{name}: must be >= {low:g}, got {getattr(cfg, name)}")

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples, ...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            items = [_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot ("1e-4") as strings
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} (valid keys of {prefix.rstrip('.') or cls.__name__}: "
            f"{', '.join(sorted(fields))})"
        )
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field without a value
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None
    except ValueError as err:  # __post_init__ validation
        raise ConfigError(f"{prefix}{err}") from None
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-data form of a config (tuples become lists), suitable for YAML and JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    """A short, stable hash of the resolved config (sha256 of its canonical JSON, credentials
    redacted: a hash of a secret is never written, and rotating one keeps the hash)."""
    blob = json.dumps(redacted(to_dict(cfg)), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted override set (intermediate mappings created)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        parts, value = parse_override(text)
        _set_dotted(out, parts, value, f"override {text!r}")
    return out


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def _apply_env_secrets(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the credentials the launcher passed in :data:`SECRETS_ENV` for ``cls``."""
    raw = os.environ.get(SECRETS_ENV)
    if not raw:
        return data
    try:
        values = json.loads(raw).get(cls.__name__, {})
    except (ValueError, AttributeError):
        raise ConfigError(f"${SECRETS_ENV} is not a JSON mapping of config class -> dotted key -> value") from None
    for key, value in values.items():
        _set_dotted(data, key.split("."), value, f"${SECRETS_ENV} {key}")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML raises ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Load ``cls`` from the YAML file ``path`` (or defaults) with dotted overrides applied."""
    data = read_yaml(path) if path is not None else {}
    try:
        return from_dict(cls, _apply_env_secrets(cls, apply_overrides(data, overrides)))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what a run actually used)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
