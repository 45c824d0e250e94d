"""Stage bookkeeping for the quickstart: numbered headers, per-stage and total wall time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageClock:
    """Prints ``[k/N] name: what`` when a stage starts and its time when it ends."""

    def __init__(self, names: list[str]):
        self.names = names
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(text, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        k = self.names.index(name) + 1
        self._print(f"\n[{k}/{len(self.names)}] {name}: {what}")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self._print(f"[{k}/{len(self.names)}] {name} FAILED after {format_seconds(time.perf_counter() - start)}")
            raise
        self.seconds[name] = time.perf_counter() - start
        self._print(f"[{k}/{len(self.names)}] {name} done in {format_seconds(self.seconds[name])} "
                    f"(total {format_seconds(self.total)})")

    def note(self, text: str) -> None:
        self._print(f"      {text}")

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
