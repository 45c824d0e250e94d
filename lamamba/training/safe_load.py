"""Opening checkpoint files without running code from them.

A ``.pt`` file is a pickle, and unpickling can call any Python function the file names. Every
``.pt`` file of a checkpoint (DeepSpeed's model and optimizer states; lamamba writes its own state
as JSON and safetensors) is opened with ``torch.load(weights_only=True)``, which rebuilds only
tensors and plain containers, plus an explicit allow-list of the DeepSpeed
classes its files name. A file that names anything else is refused with
:class:`UnsafeCheckpointError` naming the file and the first disallowed global; nothing of it runs.

DeepSpeed reads its files through the engine's checkpoint engine (``engine.checkpoint_engine``,
DeepSpeed's extension point for storage back-ends, whose stock ``TorchCheckpointEngine`` loads with
``weights_only=False``). :func:`install` wraps it so that loads go through :func:`safe_torch_load`
while saves stay DeepSpeed's. tests/training/test_training_safe_load.py fails if DeepSpeed stops
loading through it or starts pickling a class outside the allow-list.
"""

from __future__ import annotations

import pickle
import re
from typing import Any

import torch


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file that would run code (or names a class outside the allow-list) when loaded."""


def _allowed() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    # Plain data holders that DeepSpeed pickles into its optimizer states (DeepSpeed 0.19):
    # the loss scaler's fields, the ZeRO stage enum and (start, numel) fragment addresses.
    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str, map_location: Any = None) -> Any:
    """``torch.load(path)`` that cannot execute code; raises :class:`UnsafeCheckpointError`
    naming ``path`` for a file that needs anything beyond tensors, containers and the allow-list."""
    allowed = _allowed()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the first global it refused
        what = f"it names GLOBAL {found.group(1)}" if found else str(err).strip().splitlines()[-1]
        raise UnsafeCheckpointError(f"refusing to load checkpoint file {path}: it is not plain tensor data "
                                    f"({what}); a checkpoint may hold only tensors, containers and "
                                    f"{', '.join(f'{c.__module__}.{c.__qualname__}' for c in allowed)}") from None


class _SafeLoads:
    """DeepSpeed's checkpoint engine with :func:`safe_torch_load` for every load."""

    def __init__(self, inner):
        self._inner = inner

    def load(self, path: str, map_location=None):
        return safe_torch_load(path, map_location=map_location)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def install(engine) -> None:
    """Make every checkpoint file ``engine.load_checkpoint`` reads go through :func:`safe_torch_load`."""
    current = getattr(engine, "checkpoint_engine", None)
    if current is None or not callable(getattr(current, "load", None)):
        raise TypeError(f"DeepSpeed {type(engine).__name__} has no checkpoint_engine with a load method: "
                        "cannot make checkpoint loading safe with this DeepSpeed version")
    if not isinstance(current, _SafeLoads):
        engine.checkpoint_engine = _SafeLoads(current)
