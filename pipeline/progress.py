"""A dependency-free progress line for long batch jobs (images/s, failures)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``label: done/total  rate/s  failures`` to stderr at most every ``interval`` s.

    On a terminal the line is redrawn in place; in logs (CI, cluster jobs) each
    update is its own line so progress stays visible.
    """

    def __init__(self, total: int | None, label: str, unit: str = "img", interval: float = 2.0,
                 stream=None, enabled: bool = True):
        self.total = total
        self.label = label
        self.unit = unit
        self.interval = interval
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.failed = 0
        self.extra: dict[str, str] = {}
        self._start = time.perf_counter()
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_line: str | None = None

    def update(self, n: int = 1, failed: int = 0, **extra) -> None:
        self.done += n
        self.failed += failed
        self.extra.update({k: str(v) for k, v in extra.items()})
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

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
        if self._tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._emit()
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
