"""The conventions every command shares, in one place.

- absl flags; ``run(main)`` replaces ``absl.app.run`` and gives every command the same behaviour:
  ``--help`` (or ``-h``, ``--helpfull``) prints the help and exits 0;
  an unknown flag, a bad flag value, a missing required flag or a mistyped config key
  (``--config.train.num_stepz=3``) is **one line** on stderr and exit 2, no traceback;
  ``--print_config`` (commands with a ``--config``) prints the resolved, flattened config and
  exits 0.
- Exit status: ``OK`` 0; ``CHECK_FAILED`` 1 (a check ran and failed: preflight, validation, an
  AOT compile that does not fit); ``USAGE`` 2 (usage, config or data mismatch); ``NAN_STOP`` 3.
- ``--json=<path>`` writes the command's JSON there (``-``: stdout); a bare ``--json`` (the old
  form of ``validate_data`` and ``preflight``) means stdout.
- Notices and warnings go to stderr (``notice``), results to stdout.

Why not plain ``app.run``: absl exits 1 on ``--help`` and prints a traceback for a config
override that names no field (ml_collections raises inside flag parsing).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags

OK, CHECK_FAILED, USAGE, NAN_STOP = 0, 1, 2, 3
_HELP = ("--help", "-h", "--helpfull", "--helpshort", "-?")


class UsageError(Exception):
    """A usage, config or data-mismatch error: one line on stderr, exit 2."""


def program_name() -> str:
    """``train`` for ``python -m mobiledet_jax.train``, ``export`` for the export package."""
    parts = sys.argv[0].replace("\\", "/").split("/")
    name = parts[-2] if parts[-1] == "__main__.py" and len(parts) > 1 else parts[-1]
    return name[:-3] if name.endswith(".py") else name


def fail(message: str, code: int = USAGE) -> NoReturn:
    """One line on stderr, then exit ``code``."""
    print(f"{program_name()}: {message}", file=sys.stderr)
    sys.exit(code)


def notice(message: str) -> None:
    """A notice or warning for the user: stderr, so that stdout holds only results."""
    print(f"{program_name()}: {message}", file=sys.stderr)


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
        with open(path, "w") as f:
            f.write(text + "\n")


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
        try:
            return main(argv)
        except UsageError as e:
            fail(str(e))

    app.run(guarded, flags_parser=parse_then_check)
    sys.exit(OK)  # app.run exits itself; this line only documents it
