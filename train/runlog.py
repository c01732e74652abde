"""Run logs: per-epoch ``metrics.csv``, ``train.log``, TensorBoard scalars, data-wait timing.

Only rank 0 writes files (the callers pass ``enabled=ctx.is_main``).

Data-wait fraction: the share of an epoch's wall time the training loop spent
blocked in ``next(loader)``. Near 0 means the model is the bottleneck; near 1
means the input pipeline is (more ``--workers``, faster storage, or stored
peripheral features for stage 2).
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..fsutil import atomic_write_text

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "accuracy", "srcc", "lcc", "mae", "rmse", "emd",
                  "lr", "samples_per_s", "data_wait", "epoch_s")


class DataWaitTimer:
    """Wraps a batch iterator and accumulates the time spent waiting for each batch."""

    def __init__(self) -> None:
        self.wait_s = 0.0
        self.start = time.perf_counter()

    def reset(self) -> None:
        self.wait_s = 0.0
        self.start = time.perf_counter()

    def iterate(self, batches: Iterable) -> Iterator:
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                self.wait_s += time.perf_counter() - t0
                return
            self.wait_s += time.perf_counter() - t0
            yield batch

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    @property
    def fraction(self) -> float:
        elapsed = self.elapsed_s
        return min(1.0, self.wait_s / elapsed) if elapsed > 0 else 0.0


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.6g}"
    return str(value)


class MetricsCSV:
    """``metrics.csv``: one row per finished epoch; a resume drops rows after the resumed epoch."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, last_epoch: int) -> None:
        """Keep the header and rows with epoch <= ``last_epoch`` (a killed run may have logged more)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("epoch", "").isdigit()
                    and int(r["epoch"]) <= last_epoch]
        self._write_all(rows)

    def _write_all(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
        atomic_write_text(self.path, buffer.getvalue())

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _format(row.get(k)) for k in METRIC_COLUMNS})


class TensorBoard:
    """Scalars under ``run/tensorboard`` when the tensorboard package is importable; else a no-op."""

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except (ImportError, ModuleNotFoundError):
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def active(self) -> bool:
        return self.writer is not None

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunLog:
    """Human log lines to stderr (rank 0) and to ``run/train.log``."""

    def __init__(self, path: Path | None, enabled: bool = True, echo=None):
        self.path = Path(path) if path is not None else None
        self.enabled = enabled
        self.echo = echo

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(f"{stamp} {message}\n")
        if self.echo is not None:
            self.echo(message)


def epoch_summary(row: dict) -> str:
    """One log line of an epoch's metrics.csv row."""
    def num(key, fmt):
        value = row.get(key)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    return (f"epoch {row['epoch']}: train loss {num('train_loss', '.4f')}  val loss {num('val_loss', '.4f')}  "
            f"acc {num('accuracy', '.4f')}  srcc {num('srcc', '.4f')}  lcc {num('lcc', '.4f')}  "
            f"emd {num('emd', '.4f')}  lr {num('lr', '.2e')}  {num('samples_per_s', '.1f')} samples/s  "
            f"data-wait {num('data_wait', '.0%')}")
