"""The kernel tests run in Triton's CPU interpreter (see ../triton_env.py)."""

import pytest

from triton_env import INTERPRET


@pytest.fixture(autouse=True)
def triton_interpret_env(monkeypatch):
    """Inside these tests the backend dispatch sees the mode the kernels were built in."""
    monkeypatch.setenv("TRITON_INTERPRET", INTERPRET)
