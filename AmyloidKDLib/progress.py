"""Progress that fits where it goes: tqdm bars on a terminal, plain throttled lines elsewhere.

Every progress display of the library and the training pipeline goes through
:func:`progress_bar`. Where stderr is a terminal (or a Jupyter kernel) it is a tqdm bar. Where
stderr is a file or a pipe (``amyloidkd demo > demo.log 2>&1``, a batch job, CI) it writes plain
lines instead, with no carriage returns::

    [progress] phantom scans: 120/219 scans (55%), 10 s, ~8 s left
    [progress] student epoch 7/40: 4/4 batches, 1.2 s, loss=0.6931

A lasting bar (``leave=True``: cases, scans) writes a line as it advances and one when it
completes; a passing one (``leave=False``: the batches of one epoch) writes one line when it
completes. Lines are throttled over the whole process: at most one every
:data:`MIN_INTERVAL_S` seconds at first, then one every twentieth of the time since the first
progress display, and at least one a minute (:data:`MAX_INTERVAL_S`) while progress is made, so
a long run's log stays readable: 20 lines in the first 100 s, 53 in 10 min, 106 in an hour.
The line of a lasting bar's completion is always written; a bar left by an error writes none.

``amyloidkd --progress bar`` forces bars wherever stderr goes (``AMYLOIDKD_PROGRESS=bar`` in the
environment does the same), ``TQDM_DISABLE=1`` (set by ``--progress lines`` and ``none``)
turns every display off.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

#: Environment variable that forces a display style: ``bar`` (tqdm bars even to a file) or
#: ``lines``; unset or ``auto``: bars on a terminal, lines elsewhere. The CLI sets it for the
#: run (and a run started inside it, such as the demo's ``predict``, keeps it).
STYLE_ENV = "AMYLOIDKD_PROGRESS"
MIN_INTERVAL_S = 5.0
MAX_INTERVAL_S = 60.0
#: The interval grows to this fraction of the time since the first display.
INTERVAL_FRACTION = 1 / 20


class _Clock:
    """The process-wide line throttle (shared by every line display)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def start(self, now: float) -> None:
        if self.first is None:
            self.first = now
        if self.last is None:
            self.last = now

    def due(self, now: float) -> bool:
        self.start(now)
        interval = min(max(MIN_INTERVAL_S, (now - self.first) * INTERVAL_FRACTION), MAX_INTERVAL_S)
        return now - self.last >= interval

    def written(self, now: float) -> None:
        self.last = now


_CLOCK = _Clock()


def disabled_by_environment() -> bool:
    """True where ``TQDM_DISABLE`` is set to a true value (``--progress lines|none``)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def use_bars(stream: TextIO | None = None) -> bool:
    """Whether displays on ``stream`` (stderr by default) are tqdm bars rather than lines."""
    style = os.environ.get(STYLE_ENV, "").strip().lower()
    if style in ("bar", "lines"):
        return style == "bar"
    stream = stream if stream is not None else sys.stderr
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False
    return "ipykernel" in sys.modules  # Jupyter: tqdm.auto draws a widget


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _plural(unit: str) -> str:
    if unit.endswith("s"):
        return unit
    return f"{unit}es" if unit.endswith(("ch", "sh", "x")) else f"{unit}s"


class LineProgress:
    """A tqdm stand-in that writes plain, throttled lines (see the module docstring).

    It has the part of tqdm's interface the project uses: iteration, ``update``,
    ``set_postfix``, ``close`` and use as a context manager.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", leave: bool = True,
                 file: TextIO | None = None, clock: _Clock | None = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.file = file
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.clock = clock or _CLOCK
        self.started = time.monotonic()
        self.clock.start(self.started)
        self.closed = False
        self._shown_at = -1  # self.n when the last line was written

    def __iter__(self) -> Iterator:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update()
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.closed = True  # an error: no "finished" line

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.leave and not self.closed:
            now = time.monotonic()
            if self.clock.due(now):
                self._write(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True,
                    **values: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        if self.leave and self.n != self._shown_at:
            self._write(now)
        elif not self.leave and self.clock.due(now):
            self._write(now)

    def line(self, now: float | None = None) -> str:
        """The display's current state as one line (without the newline)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        unit = _plural(self.unit)
        if self.total:
            text = f"{self.n}/{self.total} {unit} ({100 * self.n / self.total:.0f}%), {_seconds(elapsed)}"
            if 0 < self.n < self.total:
                text += f", ~{_seconds(elapsed / self.n * (self.total - self.n))} left"
        else:
            text = f"{self.n} {unit}, {_seconds(elapsed)}"
        if self.postfix:
            text += ", " + ", ".join(f"{key}={value}" for key, value in self.postfix.items())
        return f"[progress] {self.desc}: {text}" if self.desc else f"[progress] {text}"

    def _write(self, now: float) -> None:
        stream = self.file if self.file is not None else sys.stderr
        if stream is None:
            return
        print(self.line(now), file=stream, flush=True)
        self._shown_at = self.n
        self.clock.written(now)


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, enabled: bool = True,
                 file: TextIO | None = None) -> Any:
    """A progress display over ``iterable`` (or updated by hand up to ``total``): a tqdm bar
    where stderr is a terminal, a :class:`LineProgress` elsewhere, a silent pass-through when
    ``enabled`` is False or ``TQDM_DISABLE`` is set (see the module docstring)."""
    stream = file if file is not None else sys.stderr
    if not enabled or disabled_by_environment():
        from tqdm import tqdm

        return tqdm(iterable, total=total, disable=True)
    if use_bars(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream)


__all__ = ["LineProgress", "MAX_INTERVAL_S", "MIN_INTERVAL_S", "STYLE_ENV", "progress_bar", "use_bars"]
