"""gpf.pipeline.progress: a live tqdm bar on a terminal, the same plain lines as ever in logs."""
from __future__ import annotations

import io
import re
import sys

import pytest

from gpf.pipeline import progress as progress_mod
from gpf.pipeline.progress import Progress

tqdm = pytest.importorskip("tqdm")


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class FakeLog(io.StringIO):
    def isatty(self) -> bool:
        return False


# -- logs (not a TTY): one plain line per interval, format unchanged

LINE = re.compile(r"^(?P<label>.+): (?P<done>\d+)(?:/(?P<total>\d+))? (?P<unit>\S+)  "
                  r"(?P<rate>\d+\.\d) (?P=unit)/s  failures (?P<failed>\d+)(?P<extra>(?:  \S+ \S+)*)$")


def test_log_mode_writes_plain_lines_in_the_old_format():
    out = FakeLog()
    bar = Progress(10, "preprocess", stream=out, interval=0)
    bar.update(4)
    bar.update(3, failed=2)
    bar.update(3, failed=1, **{"data-wait": "12%"})
    bar.close()
    lines = out.getvalue().splitlines()
    assert out.getvalue().endswith("\n") and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert bar._bar is None
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["done"], m["total"], m["failed"]) for m in parsed[:3]] == [("4", "10", "0"), ("7", "10", "2"),
                                                                          ("10", "10", "3")]
    assert parsed[0]["label"] == "preprocess" and parsed[0]["unit"] == "img"
    assert parsed[2]["extra"] == "  data-wait 12%"
    # close() writes the final state unless it is the very line just written
    assert parsed[-1]["done"] == "10" and parsed[-1]["failed"] == "3"
    assert (bar.done, bar.failed) == (10, 3)


def test_log_mode_exact_line():
    out = FakeLog()
    bar = Progress(None, "evaluate test", unit="sample", stream=out, interval=0)
    bar._start -= 1e9          # a rate that rounds to 0.0 whatever the clock says
    bar.update(5)
    assert out.getvalue() == "evaluate test: 5 sample  0.0 sample/s  failures 0\n"


def test_log_mode_respects_the_interval():
    out = FakeLog()
    bar = Progress(1000, "train", stream=out, interval=3600)
    for _ in range(100):
        bar.update(10)
    assert len(out.getvalue().splitlines()) <= 1      # at most the first update
    bar.close()
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("train: 1000/1000 img")


def test_a_stream_without_isatty_is_a_log():
    class Bare:
        def __init__(self):
            self.parts = []

        def write(self, s):
            self.parts.append(s)

        def flush(self):
            pass

    out = Bare()
    bar = Progress(2, "x", stream=out, interval=0)
    bar.update(2)
    bar.close()
    assert bar._bar is None and "".join(out.parts).startswith("x: 2/2 img")


@pytest.mark.parametrize("tty", [True, False])
def test_disabled_writes_nothing(tty):
    out = FakeTerminal() if tty else FakeLog()
    bar = Progress(5, "quiet", stream=out, interval=0, enabled=False)
    bar.update(5, failed=1)
    bar.close()
    assert out.getvalue() == "" and bar._bar is None
    assert (bar.done, bar.failed) == (5, 1)


def test_default_stream_is_stderr_at_construction(monkeypatch):
    fake = FakeLog()
    monkeypatch.setattr(sys, "stderr", fake)
    bar = Progress(1, "s", interval=0)
    bar.update(1)
    bar.close()
    assert fake.getvalue().startswith("s: 1/1 img")


# -- terminal: a live tqdm bar

def test_terminal_mode_draws_a_tqdm_bar_with_failures_and_extras():
    out = FakeTerminal()
    bar = Progress(10, "preprocess", stream=out, interval=0)
    assert isinstance(bar._bar, tqdm.tqdm)
    assert bar._bar.total == 10 and bar._bar.desc.startswith("preprocess") and bar._bar.unit == "img"
    bar.update(4)
    bar.update(3, failed=2)
    bar.update(3, failed=1, **{"data-wait": "12%"})
    assert bar._bar.n == 10 and (bar.done, bar.failed) == (10, 3)
    bar.close()
    assert bar._bar.disable                          # tqdm marks a closed bar disabled
    text = out.getvalue()
    assert "\r" in text                              # redrawn in place
    final = text.rsplit("\r", 1)[-1]
    assert final.endswith("\n")                      # left on screen, cursor on a new line
    assert "preprocess" in final and "10/10" in final and "100%" in final
    assert "failures=3" in final and "data-wait=12%" in final
    assert "img/s" in final or "s/img" in final      # the rate
    # no plain log lines mixed in
    assert not any(LINE.match(line.strip("\r")) for line in text.splitlines())


def test_terminal_mode_shows_eta_while_running():
    out = FakeTerminal()
    bar = Progress(100, "train", stream=out, interval=0)
    bar._bar.mininterval = 0
    bar.update(25)
    bar._bar.refresh()
    current = out.getvalue().rsplit("\r", 1)[-1]
    assert "25/100" in current and "<" in current   # tqdm's "elapsed<remaining"
    bar.close()


@pytest.mark.parametrize("tty", [True, False])
def test_skipped_work_counts_but_is_not_in_the_rate(tty):
    """A resumed run: 90,000 images done before, 20 now in >= 0.2 s is about 100 img/s, not 90,000 img/s."""
    import time

    out = FakeTerminal() if tty else FakeLog()
    bar = Progress(100_000, "preprocess", stream=out, interval=0)
    bar.skip(90_000)
    time.sleep(0.2)
    bar.update(20)
    assert (bar.done, bar.skipped) == (90_020, 90_000) and bar.rate < 200
    bar.close()
    final = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "90020/100000" in final
    rate = re.search(r"(\d+(?:\.\d+)?)\s*(k?)img/s", final)
    assert float(rate.group(1)) < 200 and not rate.group(2), final
    if tty:
        assert bar._bar.n == 90_020 and "90%" in final


def test_terminal_mode_without_total():
    out = FakeTerminal()
    with Progress(None, "evaluate", unit="sample", stream=out, interval=0) as bar:
        bar.update(7, failed=1)
    assert bar._bar.n == 7 and bar._bar.disable
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert "7sample" in final.replace(" ", "") and "failures=1" in final


def test_tty_parameter_forces_the_mode():
    forced_bar = Progress(3, "a", stream=FakeLog(), tty=True)
    assert forced_bar._bar is not None
    forced_bar.close()
    forced_log = Progress(3, "b", stream=FakeTerminal(), tty=False, interval=0)
    assert forced_log._bar is None
    forced_log.update(3)
    forced_log.close()
    assert forced_log.stream.getvalue().startswith("b: 3/3 img")


def test_terminal_without_tqdm_falls_back_to_an_in_place_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)      # `import tqdm` raises ImportError
    out = FakeTerminal()
    bar = Progress(4, "fallback", stream=out, interval=0)
    assert bar._bar is None
    bar.update(4, failed=1)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rfallback: 4/4 img") and "failures 1" in text and text.endswith("\n")


def test_callers_keep_the_public_api():
    bar = Progress(2, "api", stream=FakeLog(), interval=0)
    bar.update()
    bar.update(1, failed=0, loss=0.5)
    assert bar.rate > 0 and bar.extra == {"loss": "0.5"}
    bar.close()
    assert progress_mod.Progress is Progress


def test_a_terminal_that_reports_no_size_still_gets_a_bar(monkeypatch):
    """Some pseudo-terminals report 0 x 0; tqdm would draw nothing there, so the bar gets a fallback size."""
    import os

    class SizelessTerminal(FakeTerminal):
        def fileno(self) -> int:
            return 2

    real = os.get_terminal_size
    monkeypatch.setattr(os, "get_terminal_size",
                        lambda fd=None: os.terminal_size((0, 0)) if fd == 2 else real(*([] if fd is None else [fd])))
    monkeypatch.setenv("COLUMNS", "90")
    monkeypatch.setenv("LINES", "30")
    out = SizelessTerminal()
    bar = Progress(6, "sizeless", stream=out, interval=0)
    assert (bar._bar.ncols, bar._bar.nrows) == (90, 30)
    bar.update(6, failed=2)
    bar.close()
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert "6/6" in final and "failures=2" in final and len(final.rstrip("\n")) <= 90


def test_close_prints_no_second_line_when_only_the_rate_moved():
    import io

    from gpf.pipeline.progress import Progress

    stream = io.StringIO()
    bar = Progress(4, "predict", enabled=True, stream=stream, tty=False, interval=0.0)
    bar.update(4)
    bar.close()
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and "4/4" in lines[0]
