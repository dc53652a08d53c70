"""The command-line tools keep this project's INFO lines and drop orbax's INFO chatter."""

import logging
import os

from mobiledet_jax import console_logs


def _record(pathname, level):
    return logging.LogRecord("absl", level, pathname, 1, "msg", None, None)


def test_orbax_info_dropped_warnings_and_own_lines_kept(monkeypatch):
    monkeypatch.delenv("MOBILEDET_LIBRARY_LOGS", raising=False)
    absl_logger = logging.getLogger("absl")
    before = list(absl_logger.filters)
    try:
        console_logs.setup()
        console_logs.setup()  # idempotent: one filter
        added = [f for f in absl_logger.filters if f not in before]
        assert len(added) == 1
        orbax = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
        assert not absl_logger.filter(_record(orbax, logging.INFO))
        assert absl_logger.filter(_record(orbax, logging.WARNING))
        own = os.path.join("mobiledet_jax", "train.py")
        assert absl_logger.filter(_record(own, logging.INFO))
        assert logging.getLogger().level == logging.INFO
    finally:
        absl_logger.filters[:] = before


def test_library_logs_switch_keeps_everything(monkeypatch):
    monkeypatch.setenv("MOBILEDET_LIBRARY_LOGS", "1")
    absl_logger = logging.getLogger("absl")
    before = list(absl_logger.filters)
    try:
        console_logs.setup()
        assert absl_logger.filters == before
    finally:
        absl_logger.filters[:] = before
