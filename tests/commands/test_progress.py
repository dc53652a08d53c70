"""The progress line: plain lines off a terminal, a redrawn bar on one, log records clear it."""

import io
import logging

import pytest

from mobiledet_jax import progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_durations():
    assert progress.format_duration(7.4) == "7s"
    assert progress.format_duration(245) == "4m05s"
    assert progress.format_duration(2 * 3600 + 13 * 60 + 59) == "2h13m"
    assert progress.format_duration(3 * 86400 + 4 * 3600) == "3d04h"
    assert progress.format_duration(-3) == "0s"


def test_plain_lines_at_log_steps_with_rate_and_eta(clock):
    out = io.StringIO()
    # a resumed run at step 100 of 800; step 101 compiles and stays out of the rate
    bar = progress.Progress("train", 800, "step", start=100, eta_from=101, stream=out)
    clock.now += 20  # the compile
    bar.update(101)
    clock.now += 10
    bar.update(120, "loss 1.234  lr 0.04  35.2 img/s", line=True)  # 19 steps in 10 s
    bar.update(121)  # no line: not a log step and under PLAIN_LINE_SECONDS
    lines = out.getvalue().splitlines()
    assert lines == [
        # (800 - 120) / 1.9 steps/s = 357.9 s
        "train: step 120/800 (15%)  loss 1.234  lr 0.04  35.2 img/s  ETA 5m58s"
    ]
    assert "\r" not in out.getvalue()
    clock.now += progress.PLAIN_LINE_SECONDS  # a long stretch without a log step: one line
    bar.update(130)
    assert len(out.getvalue().splitlines()) == 2
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("train: step 130/800 in ")


def test_unknown_total_and_disabled(clock):
    out = io.StringIO()
    bar = progress.Progress("prepare", None, "image", stream=out)
    clock.now += 1
    bar.update(5, line=True)
    assert out.getvalue() == "prepare: image 5\n"
    quiet = progress.Progress("eval", 4, "batch", stream=out, enabled=False)
    quiet.update(4, line=True)
    quiet.close()
    assert out.getvalue() == "prepare: image 5\n"


def test_terminal_bar_redrawn_and_cleared_by_log_records(clock):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = progress.Progress("eval", 4, "batch", stream=out, terminal=True)
        clock.now += 1
        bar.update(1, line=True)
        assert out.getvalue() == "\r\033[Keval [######..................] batch 1/4 (25%)  ETA 3s"
        logging.getLogger("some.library").warning("a warning")  # clears the bar first
        assert out.getvalue().endswith("ETA 3s\r\033[Ka warning\n")
        clock.now += 1
        bar.update(2)  # redrawn below the record
        assert out.getvalue().endswith(
            "a warning\n\r\033[Keval [############............] batch 2/4 (50%)  ETA 2s"
        )
        bar.close("done")
        assert out.getvalue().endswith("\r\033[Keval: done\n")
        assert progress._active is None
        logging.getLogger("some.library").warning("after")
        assert out.getvalue().endswith("eval: done\nafter\n")  # nothing to clear any more
    finally:
        root.removeHandler(handler)


def test_plain_forced_by_environment(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.is_terminal(Tty())
    monkeypatch.setenv("MOBILEDET_PROGRESS", "plain")
    assert not progress.is_terminal(Tty())
    assert not progress.is_terminal(io.StringIO())
