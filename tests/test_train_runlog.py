"""Run logs (gpf.train.runlog): metrics.csv, train.log, TensorBoard scalars, data-wait timing.

metrics.csv is read back with the csv module, train.log line by line.
"""
from __future__ import annotations

import csv
import datetime

import pytest

from gpf.train.runlog import METRIC_COLUMNS, DataWaitTimer, MetricsCSV, RunLog, epoch_summary


def test_data_wait_fraction_with_a_fake_clock(monkeypatch):
    clock = iter([0.0,            # timer start
                  0.0, 3.0,       # first batch: waited 3 s
                  5.0, 6.0,       # second batch: waited 1 s (2 s of compute before)
                  9.0, 9.0,       # end of the loader: no wait
                  10.0])          # fraction asked at t = 10
    monkeypatch.setattr("gpf.train.runlog.time.perf_counter", lambda: next(clock))
    timer = DataWaitTimer()
    assert list(timer.iterate(["a", "b"])) == ["a", "b"]
    assert timer.wait_s == pytest.approx(4.0)
    assert timer.fraction == pytest.approx(0.4)


def test_metrics_csv_drops_rows_after_the_resumed_epoch(tmp_path):
    metrics = MetricsCSV(tmp_path / "metrics.csv")
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "train_loss": 0.5 / epoch, "val_loss": float("nan"), "mae": None})
    metrics.truncate_after(2)
    metrics.append({"epoch": 3, "train_loss": 0.1})
    lines = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss,accuracy,srcc,lcc,mae,rmse,emd,lr,samples_per_s,data_wait")
    assert [line.split(",")[:3] for line in lines[1:]] == [["1", "0.5", "nan"], ["2", "0.25", "nan"],
                                                           ["3", "0.1", ""]]


def test_tensorboard_scalars_when_importable_and_silent_otherwise(tmp_path, monkeypatch):
    import sys
    import types

    from gpf.train.runlog import TensorBoard

    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("closed",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    board = TensorBoard(tmp_path / "tb")
    board.scalars({"train_loss": 0.5, "mae": None, "srcc": float("nan"), "epoch": 3}, step=3)
    board.close()
    assert calls == [("dir", str(tmp_path / "tb")), ("train_loss", 0.5, 3), ("epoch", 3, 3), ("closed",)]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)      # import fails
    silent = TensorBoard(tmp_path / "tb2")
    assert not silent.active
    silent.scalars({"train_loss": 0.5}, step=1)


def test_metrics_csv_round_trips_through_the_csv_module(tmp_path):
    """What append writes, csv.DictReader reads back: every column, in order, with the values formatted."""
    path = tmp_path / "metrics.csv"
    metrics = MetricsCSV(path)
    metrics.truncate_after(3)                           # no file yet: nothing to keep, nothing written
    assert not path.exists()
    rows = [{"epoch": 1, "train_loss": 1 / 3, "val_loss": 0.5, "srcc": float("nan"), "lr": 0.01,
             "unknown_key": "ignored"},
            {"epoch": 2, "train_loss": 0.25, "accuracy": 0.75, "samples_per_s": 1234.5678, "data_wait": None}]
    for row in rows:
        metrics.append(row)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == METRIC_COLUMNS
        read = list(reader)
    assert [r["epoch"] for r in read] == ["1", "2"]
    assert float(read[0]["train_loss"]) == pytest.approx(1 / 3, rel=1e-5)     # 6 significant digits
    assert read[0]["srcc"] == "nan" and read[0]["accuracy"] == "" and "unknown_key" not in read[0]
    assert float(read[1]["samples_per_s"]) == pytest.approx(1234.57) and read[1]["data_wait"] == ""

    metrics.truncate_after(1)
    with open(path, newline="") as f:
        kept = list(csv.DictReader(f))
    assert [r["epoch"] for r in kept] == ["1"] and kept[0]["val_loss"] == "0.5"
    metrics.truncate_after(0)
    assert path.read_text().strip() == ",".join(METRIC_COLUMNS)           # the header stays


def test_metrics_csv_of_another_rank_writes_nothing(tmp_path):
    metrics = MetricsCSV(tmp_path / "metrics.csv", enabled=False)
    metrics.append({"epoch": 1, "train_loss": 0.5})
    metrics.truncate_after(0)
    assert not (tmp_path / "metrics.csv").exists()


def test_run_log_writes_timestamped_lines_and_echoes_the_message(tmp_path):
    echoed = []
    log = RunLog(tmp_path / "train.log", echo=echoed.append)
    log("first line")
    log("second: 50%")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 2 and echoed == ["first line", "second: 50%"]
    for line, message in zip(lines, echoed):
        stamp, text = line[:19], line[20:]
        datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        assert text == message
    RunLog(tmp_path / "train.log")("third")                                # appends, does not rewrite
    assert (tmp_path / "train.log").read_text().splitlines()[:2] == lines


def test_run_log_of_another_rank_is_silent(tmp_path):
    echoed = []
    RunLog(tmp_path / "train.log", enabled=False, echo=echoed.append)("hello")
    RunLog(None, echo=echoed.append)("only echoed")
    assert not (tmp_path / "train.log").exists() and echoed == ["only echoed"]


def test_epoch_summary_shows_missing_and_nan_metrics_as_a_dash():
    line = epoch_summary({"epoch": 4, "train_loss": 0.123456, "val_loss": float("nan"), "accuracy": None,
                          "srcc": 0.5, "lr": 0.001, "samples_per_s": 12.34, "data_wait": 0.25})
    assert line.startswith("epoch 4: train loss 0.1235  val loss -  acc -  srcc 0.5000  lcc -  emd -")
    assert "lr 1.00e-03" in line and "12.3 samples/s" in line and line.endswith("data-wait 25%")
