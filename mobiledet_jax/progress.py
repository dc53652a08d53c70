"""Progress of long work as a person reads it: a bar on a terminal, plain lines in a log file.

Every long step of the commands (training, data preparation, evaluation, export's conversion,
calibration and scoring) reports through ``Progress``::

    bar = Progress("train", total=800, unit="steps")
    bar.update(120, "loss 1.234  lr 0.0400  35 img/s", line=True)
    bar.close("done in 8m12s")

On a terminal (the stream is a TTY) the line is redrawn in place with a bar and an ETA; any log
record printed meanwhile first clears it (a filter on the root logger's handlers), and the next
update draws it again below. Elsewhere (a log file, CI, ``tee``) each update with ``line=True``
is one plain line, and other updates print a line at most every ``PLAIN_LINE_SECONDS``, so a log
file gets a readable line per log step and never a screen of carriage returns. The full detail
(every scalar) stays in TensorBoard and the JSON-lines files; this is the human summary.

Progress goes to stderr: stdout holds the commands' results (``command_line``). Only process 0 of
a multi-process run draws (``enabled``). Written here rather than with tqdm because the plain-line
mode must print at log steps chosen by the caller, with the caller's text, and must coexist with
absl's log lines on the same stream; tqdm's file mode rewrites one line with carriage returns.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

PLAIN_LINE_SECONDS = 30.0  # a plain (non-terminal) line at least this often without line=True
_REDRAW_SECONDS = 0.1  # a terminal bar redraws at most this often
_BAR_WIDTH = 24

_active: Progress | None = None  # the bar currently drawn on a terminal, if any


def format_duration(seconds: float) -> str:
    """``7s``, ``4m05s``, ``2h13m``, ``3d04h``: an ETA or an elapsed time."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def is_terminal(stream: TextIO) -> bool:
    """A stream a person watches live (``MOBILEDET_PROGRESS=plain`` forces log-file lines)."""
    if os.environ.get("MOBILEDET_PROGRESS") == "plain":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _ClearBarFilter(logging.Filter):
    """Clears the drawn bar before a log record goes to the same terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _active is not None:
            _active._clear()
        return True


_FILTER = _ClearBarFilter()


def _install_filter() -> None:
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


class Progress:
    """``done/total`` of one task with a rate and ETA; see the module docstring.

    ``total``: the amount of work (0 or None: unknown, no bar nor ETA). ``unit``: what is counted
    (``steps``, ``images``, ``batches``). ``start``: work already done when timing starts (a
    resumed run), so the rate and ETA count only this run's work. ``eta_from``: the done count
    after which timing starts (the first step includes the compile; ``eta_from=start + 1`` keeps
    it out of the ETA).
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str = "",
        *,
        start: int = 0,
        eta_from: int | None = None,
        stream: TextIO | None = None,
        enabled: bool = True,
        terminal: bool | None = None,
    ):
        self.label, self.total, self.unit = label, total or 0, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self.done = start
        self._t0 = time.monotonic()
        self._timing_from = start if eta_from is None else eta_from
        self._timing_t0: float | None = self._t0 if eta_from is None else None
        self._last_line = self._last_draw = self._t0
        self._drawn = False
        self._text = ""
        if self.enabled and self.terminal:
            global _active
            _install_filter()
            _active = self

    # -- figures ---------------------------------------------------------------------------
    def rate(self) -> float | None:
        """Units per second since timing started (None before there is a measurement)."""
        if self._timing_t0 is None or self.done <= self._timing_from:
            return None
        elapsed = time.monotonic() - self._timing_t0
        return (self.done - self._timing_from) / elapsed if elapsed > 0 else None

    def eta(self) -> float | None:
        rate = self.rate()
        if not self.total or not rate:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def status(self) -> str:
        """``step 120/800 (15%)  loss ...  ETA 4m05s``: the line without the label."""
        unit = f"{self.unit} " if self.unit else ""
        if self.total:
            count = f"{unit}{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
        else:
            count = f"{unit}{self.done}"
        parts = [count]
        if self._text:
            parts.append(self._text)
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    # -- output ----------------------------------------------------------------------------
    def update(self, done: int, text: str | None = None, line: bool = False) -> None:
        """``done`` units finished; ``text``: the caller's figures (kept until replaced);
        ``line``: a plain line now (off a terminal), e.g. at a log step."""
        now = time.monotonic()
        if self._timing_t0 is None and done >= self._timing_from:
            self._timing_t0, self._timing_from = now, done
        self.done = done
        if text is not None:
            self._text = text
        if not self.enabled:
            return
        if self.terminal:
            if line or now - self._last_draw >= _REDRAW_SECONDS or done == self.total:
                self._draw()
        elif line or now - self._last_line >= PLAIN_LINE_SECONDS:
            self._print(f"{self.label}: {self.status()}")

    def message(self, text: str) -> None:
        """A line that stays (on a terminal, above the bar)."""
        if not self.enabled:
            return
        self._clear()
        self._print(f"{self.label}: {text}")

    def close(self, summary: str | None = None) -> None:
        """Ends the bar; ``summary`` (default: the count and the elapsed time) is the last line."""
        global _active
        if _active is self:
            _active = None
        if not self.enabled:
            return
        self._clear()
        unit = f"{self.unit} " if self.unit else ""
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        text = summary or f"{unit}{count} in {format_duration(self.elapsed())}"
        self._print(f"{self.label}: {text}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _bar(self) -> str:
        if not self.total:
            return ""
        filled = int(_BAR_WIDTH * min(self.done, self.total) / self.total)
        return "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "] "

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self.stream.write(f"\r\033[K{self.label} {self._bar()}{self.status()}")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def _print(self, text: str) -> None:
        self._last_line = time.monotonic()
        print(text, file=self.stream, flush=True)
