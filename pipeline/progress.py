"""Progress of long batch jobs (images/s, failures): a live bar on a terminal, plain lines in logs.

On a terminal (``stream.isatty()``) :class:`Progress` draws a `tqdm`_ bar that
redraws in place: count of total, percentage, rate, ETA and, in the postfix,
the failures so far plus any extra fields (``data-wait`` in training). In logs
(CI, cluster jobs, a pipe) it writes one plain line per ``interval`` seconds,
at most, so progress stays visible and greppable::

    preprocess: 640/2000 img  212.4 img/s  failures 3

.. _tqdm: https://tqdm.github.io/
"""
from __future__ import annotations

import os
import shutil
import sys
import time


def _has_size(stream) -> bool:
    """Whether ``stream`` is a terminal that reports its size (columns and lines)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return size.columns > 0 and size.lines > 0


class Progress:
    """Progress of ``total`` units of work, called ``label``, written to ``stream`` (stderr).

    ``update(n, failed=k, **extra)`` after each batch, ``skip(n)`` for work
    done by an earlier run (a resumed preprocess: in the count and the ETA, not
    in the rate), ``close()`` at the end (or use it as a context manager).
    ``enabled=False`` writes nothing.
    ``tty`` forces the mode: ``True`` for the live bar, ``False`` for plain
    lines; ``None`` (the default) asks ``stream.isatty()``.
    """

    def __init__(self, total: int | None, label: str, unit: str = "img", interval: float = 2.0,
                 stream=None, enabled: bool = True, tty: bool | None = None):
        self.total = total
        self.label = label
        self.unit = unit
        self.interval = interval
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.skipped = 0
        self.failed = 0
        self.extra: dict[str, str] = {}
        self._start = time.perf_counter()
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else bool(tty)
        self._last_line: str | None = None
        self._last_counts: tuple[int, int] | None = None   # (done, failed) of the last line printed
        self._bar = self._make_bar() if enabled and self._tty else None

    def _make_bar(self):
        """A tqdm bar on ``stream``; None (in-place line instead) if tqdm is not installed."""
        try:
            from tqdm import tqdm
        except ImportError:  # a stale environment: fall back to redrawing one line with \r
            return None
        # Follow the terminal's size; tqdm draws nothing on a terminal that reports no size
        # (0 x 0: some pseudo-terminals), so that one gets $COLUMNS x $LINES or 80 x 24.
        sized = _has_size(self.stream)
        fallback = shutil.get_terminal_size()
        bar = tqdm(total=self.total, desc=self.label, unit=self.unit, file=self.stream,
                   mininterval=min(self.interval, 0.1), leave=True, dynamic_ncols=sized,
                   ncols=None if sized else fallback.columns, nrows=None if sized else fallback.lines,
                   postfix=self._postfix())
        return bar

    def _postfix(self) -> dict[str, str]:
        return {"failures": str(self.failed), **self.extra}

    def update(self, n: int = 1, failed: int = 0, **extra) -> None:
        self.done += n
        self.failed += failed
        self.extra.update({k: str(v) for k, v in extra.items()})
        if self._bar is not None:
            if failed or extra:
                self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.update(n)  # tqdm throttles the redraw itself (mininterval)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def skip(self, n: int) -> None:
        """Count ``n`` units done by an earlier run: they move the count and shorten the ETA, but
        the rate is over the work of this run only (a resumed run is not 80,000 img/s)."""
        self.done += n
        self.skipped += n
        if self._bar is not None:
            # tqdm's rate: an EMA of the steps between redraws, or (n - initial) / elapsed; moving
            # n, last_print_n and initial together keeps the skipped units out of both
            self._bar.n += n
            self._bar.last_print_n += n
            self._bar.initial += n
            self._bar.refresh()
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    @property
    def rate(self) -> float:
        """Units per second of this run's work (skipped units not counted)."""
        elapsed = time.perf_counter() - self._start
        return (self.done - self.skipped) / elapsed if elapsed > 0 else 0.0

    def _line(self) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        parts = [f"{self.label}: {self.done}{total} {self.unit}", f"{self.rate:.1f} {self.unit}/s",
                 f"failures {self.failed}"]
        parts += [f"{k} {v}" for k, v in self.extra.items()]
        return "  ".join(parts)

    def _emit(self) -> None:
        line = self._line()
        if not self.enabled or (line == self._last_line and not self._tty):
            return
        self._last_line = line
        self._last_counts = (self.done, self.failed)
        if self._tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.close()  # draws the final state and keeps it on screen
            return
        if self._tty or self._last_counts != (self.done, self.failed):
            self._emit()   # a log already holding the final counts gets no second line (only the rate moved)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
