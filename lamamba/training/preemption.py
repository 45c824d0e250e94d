"""Clean stops: a signal on any rank, or a spent wall-clock budget, stops every rank at the same
step boundary.

A signal handler only sets a flag; the trainer folds ``stop_requested()`` into the per-step
all-reduce it already does for the metrics, so all ranks see the sum and agree to checkpoint and
exit at the same step, whichever rank the scheduler signalled.
"""

from __future__ import annotations

import signal
import time


class PreemptionWatcher:
    """Catches the configured signals and watches the time budget (seconds since construction)."""

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"), time_budget_s: float = 0.0):
        self.started = time.monotonic()
        self.time_budget_s = time_budget_s
        self.received: str | None = None
        self._previous = {}
        for name in signals:
            try:
                signum = getattr(signal, name)
            except AttributeError:
                raise ValueError(f"preemption.signals: unknown signal {name!r}") from None
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def budget_spent(self) -> bool:
        return self.time_budget_s > 0 and time.monotonic() - self.started >= self.time_budget_s

    def stop_requested(self) -> bool:
        """True once a signal arrived on this rank or the budget is spent."""
        return self.received is not None or self.budget_spent()

    def reason(self) -> str:
        if self.received:
            return self.received
        return f"wall-clock budget of {self.time_budget_s:g}s spent" if self.budget_spent() else "another rank's request"

    def restore(self) -> None:
        """Put the previous signal handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
