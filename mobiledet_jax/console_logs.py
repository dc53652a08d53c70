"""Console logging for the command-line tools: this project's INFO lines, libraries' warnings only.

orbax-checkpoint (and TensorFlow's saver under it) write a dozen INFO lines per save (through
absl's logger), which buried the training progress lines on the console. ``setup()`` keeps every
record of this project and every WARNING or worse, and drops INFO/DEBUG records that come from
orbax's and TensorFlow's source files. Their warnings and errors keep their message but lose
their traceback: a full disk made orbax's background threads log a traceback per array (hundreds
of lines before the command's one-line error). Set ``MOBILEDET_LIBRARY_LOGS=1`` to see them again.
"""

import logging
import os

_QUIET_PACKAGES = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow{os.sep}")


class _LibraryInfoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        library = any(p in record.pathname for p in _QUIET_PACKAGES)
        if record.levelno >= logging.WARNING:
            if library and record.exc_info:
                record.exc_info, record.exc_text = None, None  # the message only: one line
            return True
        return not library


def setup(level: int = logging.INFO) -> None:
    """Sets the root level and filters library INFO lines (idempotent)."""
    logging.getLogger().setLevel(level)
    if os.environ.get("MOBILEDET_LIBRARY_LOGS") == "1":
        return
    absl_logger = logging.getLogger("absl")  # orbax logs through absl.logging
    if not any(isinstance(f, _LibraryInfoFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_LibraryInfoFilter())
