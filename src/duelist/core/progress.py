"""Progress of long work: a bar on a terminal, plain lines elsewhere.

On a terminal :class:`Progress` is a tqdm bar. Where the output is not a terminal (redirected to a file, a CI log, a
notebook's captured cell) a bar leaves escape codes and a line per refresh, so there it logs one plain line every
``every`` seconds and one at the end::

    train: 40/152 steps (26%), 1.9 s/step, loss 0.6909, 1,014 tok/s, ETA 3 min 32 s

Work that is short (``quiet``: encoding, a validation pass) logs nothing there but its end when it took long.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterator, Sequence, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("duelist.progress")
T = TypeVar("T")


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 07 s``, ``2 h 05 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """``total`` units of work (``unit``: rows, steps, shards) named ``desc``; :meth:`update` as they are done,
    with what to show beside the count (``loss=...``); :meth:`pause` / :meth:`resume` around other work (a
    validation pass) so the rate and the ETA count this work alone."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        initial: int = 0,
        quiet: bool = False,
        enabled: bool = True,
        every: float = 30.0,
    ):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.quiet, self.enabled, self.every = quiet, enabled, every
        self.bar = (
            tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=not quiet)
            if enabled and on_terminal()
            else None
        )
        self.started = self.last = time.perf_counter()
        self.paused_at: float | None = None
        self.away = 0.0  # seconds spent paused
        self.first = initial
        self.shown: dict[str, Any] = {}
        self.still_to_come = 0.0  # seconds of other work the ETA should include (validation passes left)

    def update(self, n: int = 1, **show: Any) -> None:
        self.done += n
        self.shown.update(show)
        if self.bar is not None:
            self.bar.update(n)
            if show:
                self.bar.set_postfix({k: v for k, v in self.shown.items()}, refresh=False)
        elif self.enabled and not self.quiet and time.perf_counter() - self.last >= self.every:
            self.line()

    def pause(self) -> None:
        self.paused_at = time.perf_counter()

    def resume(self) -> None:
        if self.paused_at is not None:
            self.away += time.perf_counter() - self.paused_at
            self.paused_at = None
        if self.bar is not None:
            self.bar.unpause()  # tqdm counts its rate from here: the paused time is not in it

    def elapsed(self) -> float:
        """Seconds of this work (paused time left out)."""
        return time.perf_counter() - self.started - self.away

    def eta(self) -> float | None:
        """Seconds left at the rate so far, with :attr:`still_to_come`; None before anything is done."""
        done = self.done - self.first
        return (self.total - self.done) * self.elapsed() / done + self.still_to_come if done > 0 else None

    def line(self) -> None:
        self.last = time.perf_counter()
        done = self.done - self.first
        rate = self.elapsed() / done if done else 0.0
        pace = (
            f"{rate:.2f} s/{self.unit.rstrip('s')}" if rate >= 1 else f"{1 / rate:,.1f} {self.unit}/s" if rate else ""
        )
        names = {k: k.removesuffix("_s") + "/s" if k.endswith("_s") else k.replace("_", " ") for k in self.shown}
        shown = "".join(f", {names[k]} {v}" for k, v in self.shown.items() if not k.endswith("ETA"))
        eta = self.eta()
        left = f", ETA {duration(eta)}" if eta is not None and self.done < self.total else ""
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        log.info("%s: %d/%d %s%s, %s%s%s", self.desc, self.done, self.total, self.unit, percent, pace, shown, left)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and (not self.quiet or self.elapsed() >= self.every):
            self.line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(items: Sequence[T], desc: str, unit: str) -> Iterator[T]:
    """``items`` one by one, with a :class:`Progress` over them."""
    with Progress(len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
