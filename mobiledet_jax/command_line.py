"""The conventions every command shares, in one place.

- absl flags; ``run(main)`` replaces ``absl.app.run`` and gives every command the same behaviour:
  ``--help`` (or ``-h``, ``--helpfull``) prints the help and exits 0;
  an unknown flag, a bad flag value, a missing required flag or a mistyped config key
  (``--config.train.num_stepz=3``) is **one line** on stderr and exit 2, no traceback;
  ``--print_config`` (commands with a ``--config``) prints the resolved, flattened config and
  exits 0.
- Exit status: ``OK`` 0; ``CHECK_FAILED`` 1 (a check ran and failed: preflight, validation, an
  AOT compile that does not fit); ``USAGE`` 2 (usage, config or data mismatch); ``NAN_STOP`` 3;
  ``FAULT`` 4 (the machine, not the input: disk full, permission denied, a lost ``jax.distributed``
  coordinator, no usable checkpoint); ``INTERRUPTED`` 130 (Ctrl-C, as shells report SIGINT).
- Faults are **one line** too (``fault_message``): an ``OSError`` of ENOSPC / EDQUOT is ``no space
  left on device at <path>``, of EACCES / EPERM / EROFS ``permission denied: <path>`` (also when a
  library wraps it: tensorstore's and orbax's errors carry only the text), a lost coordinator
  ``lost the jax.distributed coordinator: ...``, and ``checkpoint_integrity.CheckpointError`` its
  message; Ctrl-C is ``interrupted``. ``train`` adds the last good checkpoint of its workdir.
- ``--json=<path>`` writes the command's JSON there (``-``: stdout); a bare ``--json`` (the old
  form of ``validate_data`` and ``preflight``) means stdout.
- Notices and warnings go to stderr (``notice``), results to stdout.

Why not plain ``app.run``: absl exits 1 on ``--help`` and prints a traceback for a config
override that names no field (ml_collections raises inside flag parsing).
"""

from __future__ import annotations

import errno
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags

OK, CHECK_FAILED, USAGE, NAN_STOP, FAULT = 0, 1, 2, 3, 4
INTERRUPTED = 130
_HELP = ("--help", "-h", "--helpfull", "--helpshort", "-?")


class UsageError(Exception):
    """A usage, config or data-mismatch error: one line on stderr, exit 2."""


def program_name() -> str:
    """``train`` for ``python -m mobiledet_jax.train``, ``export`` for the export package."""
    parts = sys.argv[0].replace("\\", "/").split("/")
    name = parts[-2] if parts[-1] == "__main__.py" and len(parts) > 1 else parts[-1]
    return name[:-3] if name.endswith(".py") else name


def fail(message: str, code: int = USAGE) -> NoReturn:
    """One line on stderr, then exit ``code``. asyncio's logger is silenced first: after a failed
    orbax save its unfinished tasks would log thousands of lines when collected at exit."""
    logging.getLogger("asyncio").disabled = True
    print(f"{program_name()}: {message}", file=sys.stderr)
    sys.exit(code)


def notice(message: str) -> None:
    """A notice or warning for the user: stderr, so that stdout holds only results."""
    print(f"{program_name()}: {message}", file=sys.stderr)


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DENIED_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "enospc")
_DENIED_TEXT = ("permission denied", "read-only file system")
_COORDINATOR_TEXT = ("coordination service", "distributed service", "missing heartbeats")
_QUOTED_PATH = re.compile(r"""["']((?:/|[a-z][a-z0-9+.-]*://)[^"'\s]+)["']""")
_BARE_PATH = re.compile(r"""(?<![\w.])((?:/|[a-z][a-z0-9+.-]*://)[^\s"';,:]+)""")


def _chain(e: BaseException | None, seen=None):
    """``e`` and the exceptions it was raised from or during, each once."""
    seen = set() if seen is None else seen
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        if e.__cause__ is not None:
            yield from _chain(e.__cause__, seen)
        e = e.__context__


def _where(e: BaseException) -> str:
    """The path an error names: an OSError's file name, else the first path in its text."""
    path = getattr(e, "filename", None) or getattr(e, "filename2", None)
    if path is None:  # tensorstore: '"/a/b": [OS error 28: ...]'; TensorFlow: '/a/b; No space...'
        match = _QUOTED_PATH.search(str(e)) or _BARE_PATH.search(str(e))
        path = match.group(1) if match else None
    return str(path) if path else ""


def _matching(chain, errnos, texts) -> list[BaseException]:
    return [
        x
        for x in chain
        if (isinstance(x, OSError) and x.errno in errnos) or any(t in str(x).lower() for t in texts)
    ]


def fault_message(e: BaseException) -> str | None:
    """The one-line message of a fault (see the module docstring), or None for any other error.

    The first failure is named: ``e``'s chain is searched from its deepest cause (a full disk
    fails the checkpoint write first, then the TensorBoard flush in a ``finally``), and the first
    of them naming a path gives the path."""
    from mobiledet_jax.checkpoint_integrity import CheckpointError

    chain = list(_chain(e))[::-1]  # the root cause first
    for x in chain:
        if isinstance(x, CheckpointError):
            return str(x)
    for errnos, texts, what, sep in (
        (_NO_SPACE_ERRNOS, _NO_SPACE_TEXT, "no space left on device", " at "),
        (_DENIED_ERRNOS, _DENIED_TEXT, "permission denied", ": "),
    ):
        found = _matching(chain, errnos, texts)
        if found:
            where = next((w for w in map(_where, found) if w), "")
            return what + (f"{sep}{where}" if where else "")
    for x in chain:
        if not isinstance(x, OSError) and any(t in str(x).lower() for t in _COORDINATOR_TEXT):
            first = " ".join(str(x).split())[:200]
            return f"lost the jax.distributed coordinator: {first}"
    return None


def _closed_loop_noise(exc_type, exc) -> bool:
    """tensorstore calling back into an asyncio loop that orbax already closed, after a failed save
    or restore: harmless, and printed once per array (a screen of tracebacks before the one line)."""
    return exc_type is RuntimeError and str(exc) == "Event loop is closed"


def _quiet_closed_loops() -> None:
    """Drops ``_closed_loop_noise`` from ``sys.excepthook`` and ``sys.unraisablehook`` (tensorstore
    reports it through both); everything else reaches the previous hooks."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(exc_type, exc, tb):
        if not _closed_loop_noise(exc_type, exc):
            excepthook(exc_type, exc, tb)

    def quiet_unraisablehook(unraisable):
        if not _closed_loop_noise(unraisable.exc_type, unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


def define_print_config() -> None:
    flags.DEFINE_bool("print_config", False, "print the resolved, flattened config and exit")


def define_json(help_text: str = "write the JSON result to this path (- for stdout)") -> None:
    flags.DEFINE_string("json", None, help_text)


def write_json(path: str | None, data: Any) -> None:
    """``--json=<path>``: the JSON document there, or on stdout for ``-``."""
    if not path:
        return
    text = json.dumps(data, indent=1, default=str)
    if path == "-":
        print(text)
    else:
        from mobiledet_jax import atomic_files  # replaced whole or not at all

        atomic_files.write_text(path, text + "\n")


def flatten_config(config, prefix: str = "") -> dict[str, Any]:
    """``{'train.num_steps': 800, ...}`` of a ConfigDict (or dict), sorted by key."""
    out = {}
    items = config.items() if hasattr(config, "items") else []
    for k, v in items:
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return dict(sorted(out.items()))


def print_config(config) -> None:
    for k, v in flatten_config(config).items():
        print(f"{k} = {v!r}")


def _config_error(e: BaseException) -> str:
    text = str(e).strip().strip("'\"").replace("\\n", " ").replace("\n", " ")
    text = text.replace("\\'", "'").replace('\\"', '"')
    return f"config: {text}"


def _parse(argv: Sequence[str]) -> list[str]:
    argv = [a if a != "--json" else "--json=-" for a in argv]  # the old bare --json: stdout
    try:
        return flags.FLAGS(argv)
    except flags.IllegalFlagValueError as e:
        if "--print_config" in argv and "must have a value other than None" in str(e):
            _print_config_and_exit()  # other required flags do not matter for printing
        fail(str(e).splitlines()[0])
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a config override
        fail(_config_error(e))


def _print_config_and_exit() -> NoReturn:
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if config is None:
        fail("--print_config needs --config")
    print_config(config)
    sys.exit(OK)


def run(main: Callable[[list[str]], Any]) -> NoReturn:
    """``absl.app.run`` with the conventions above."""
    if any(a in _HELP for a in sys.argv[1:]):
        try:
            flags.FLAGS(sys.argv[:1])  # defaults only: no required-flag check for help
        except flags.Error:
            pass
        print(flags.FLAGS.main_module_help() or flags.FLAGS.get_help(), file=sys.stdout)
        sys.exit(OK)

    def parse_then_check(argv):
        remaining = _parse(argv)
        if "print_config" in flags.FLAGS and flags.FLAGS.print_config:
            _print_config_and_exit()
        return remaining

    def guarded(argv):
        _quiet_closed_loops()
        try:
            return main(argv)
        except UsageError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)
        except Exception as e:
            message = fault_message(e)
            if message is None:
                raise
            fail(message, FAULT)

    app.run(guarded, flags_parser=parse_then_check)
    sys.exit(OK)  # app.run exits itself; this line only documents it
