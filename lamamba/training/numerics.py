"""The numerics guard: a step with a non-finite loss or gradient norm is skipped on every rank.

DeepSpeed already refuses to apply an optimizer step whose global gradient norm is not finite
(``bf16.check_grad_overflow``; the norm is reduced over ranks, so every rank agrees). The guard
counts those steps, also treats a non-finite global loss as skipped, and stops the run with a
clear error after ``max_consecutive`` in a row, before a corrupted model could be checkpointed.
"""

from __future__ import annotations

import math


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps; the last committed checkpoint is the good state."""


class NumericsGuard:
    def __init__(self, max_consecutive: int, skipped_total: int = 0):
        self.max_consecutive = max_consecutive
        self.skipped_total = skipped_total
        self.consecutive = 0

    def check(self, step: int, loss: float, grad_norm: float | None, step_applied: bool) -> bool:
        """Record one step (identical inputs on every rank); True if it counts as skipped.

        Raises :class:`NonFiniteError` after ``max_consecutive`` skipped steps in a row.
        """
        finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
        skipped = not (finite and step_applied)
        if not skipped:
            self.consecutive = 0
            return False
        self.skipped_total += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: {self.consecutive} consecutive steps with a non-finite loss or gradient norm "
                f"(last loss {loss}, grad norm {grad_norm}); stopping. The newest committed checkpoint "
                f"holds the last good state; lower the learning rate or check the data before resuming.")
        return True
