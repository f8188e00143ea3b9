"""A time budget that learns the throughput as work is done and says whether the next batch fits
(``infer.py time_budget_min=...``)."""

from __future__ import annotations

import time
from typing import Callable


class Deadline:
    """A batch of T padded tokens is predicted to take T x (seconds per padded token so far) and is started only if
    that fits in what is left. Before anything is measured, ``prior`` (seconds per token, projected from counted FLOPs:
    ``infer.py hardware=...``) is the estimate; without one the very first batch runs if any time is left. The first
    measurement replaces the prior. ``share(k)`` gives one of k remaining pieces of work an equal part of the time
    left, ``portion(f)`` the fraction f of it; each starts from the throughput measured so far (``fresh``: another
    model, measured anew) and reports its own back."""

    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        parent: "Deadline | None" = None,
        fresh: bool = False,
        prior: float | None = None,
    ):
        self.clock = clock
        self.end = clock() + seconds
        self.parent = parent
        inherit = parent is not None and not fresh
        self.tokens = parent.tokens if inherit else 0
        self.busy = parent.busy if inherit else 0.0
        self.prior = prior

    def remaining(self) -> float:
        return self.end - self.clock()

    def fits(self, tokens: int) -> bool:
        if self.tokens == 0:
            return self.remaining() > 0 if self.prior is None else tokens * self.prior <= self.remaining()
        return tokens * self.busy / self.tokens <= self.remaining()

    def record(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.busy += seconds
        if self.parent is not None:
            self.parent.record(tokens, seconds)

    def share(self, parts: int, fresh: bool = False, prior: float | None = None) -> "Deadline":
        return self.portion(1.0 / max(1, parts), fresh, prior)

    def portion(self, fraction: float, fresh: bool = False, prior: float | None = None) -> "Deadline":
        seconds = max(0.0, self.remaining()) * min(1.0, max(0.0, fraction))
        return Deadline(seconds, self.clock, parent=self, fresh=fresh, prior=prior)
