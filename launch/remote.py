"""The bash run on the TPU VM workers (through ``gcloud compute tpus tpu-vm ssh --command``).

Layout on every worker, under ``~/mobiledet_jax_run``::

    <rev12>/          one git revision: the sources, REVISION, .venv (requirements + jax[tpu])
    current -> <rev12>
    logs/train.log    appended by every start; train.pid (process group), train.exit (status)
    exports/          TFLite files written by ``export`` on worker 0

Lines starting with ``@@`` are machine-readable answers the launcher parses.
"""

import shlex

ROOT = "$HOME/mobiledet_jax_run"
LOGS = f"{ROOT}/logs"
q = shlex.quote


def _header() -> list[str]:
    return ["set -euo pipefail", f'ROOT="{ROOT}"', 'LOGS="$ROOT/logs"', 'mkdir -p "$LOGS"']


def setup(revision: str, tarball: str, sha256: str, jax_tpu: str, python: str) -> str:
    """Unpack the tarball (checked against ``sha256``) into ``$ROOT/<rev12>``, make a venv with the
    pinned requirements plus ``jax_tpu`` (e.g. ``jax[tpu]==0.10.2``), point ``current`` at it.
    Idempotent: a revision already installed is only re-pointed."""
    code = f'"$ROOT/{revision[:12]}"'
    lines = _header() + [
        f"CODE={code}",
        f'if [ -f "$CODE/.setup_ok" ] && [ "$(cat "$CODE/REVISION")" = {q(revision)} ]; then',
        f'  echo "$(hostname): revision {revision[:12]} already installed"',
        "else",
        f'  echo {q(sha256 + "  " + tarball)} | (cd "$HOME" && sha256sum --check --status) '
        f'|| {{ echo "$(hostname): {tarball} is missing or corrupt" >&2; exit 1; }}',
        '  rm -rf "$CODE" && mkdir -p "$CODE"',
        f'  tar -xzf "$HOME/{tarball}" -C "$CODE"',
        f'  echo {q(revision)} > "$CODE/REVISION"',
        f"  if ! command -v {q(python)} >/dev/null; then",
        "    sudo apt-get update -qq",
        f"    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {q(python)} "
        f"{q(python + '-venv')}",
        "  fi",
        f'  {q(python)} -m venv "$CODE/.venv"',
        '  "$CODE/.venv/bin/pip" install --quiet --upgrade pip',
        '  "$CODE/.venv/bin/pip" install --quiet -r "$CODE/requirements.txt"',
        f'  "$CODE/.venv/bin/pip" install --quiet {q(jax_tpu)}',
        '  touch "$CODE/.setup_ok"',
        "fi",
        'ln -sfn "$CODE" "$ROOT/current"',
        'echo "$(hostname): ready at revision $(cat "$ROOT/current/REVISION")"',
    ]
    return "\n".join(lines)


def check_revision(revision: str) -> str:
    """Every worker prints ``@@revision <host> <its revision>``; fails where it differs."""
    return "\n".join(
        [
            f"expected={q(revision)}",
            f'got="$(cat "{ROOT}/current/REVISION" 2>/dev/null || echo none)"',
            'echo "@@revision $(hostname) $got"',
            'test "$got" = "$expected"',
        ]
    )


def _env_exports(env: dict[str, str]) -> list[str]:
    return [f"export {k}={q(v)}" for k, v in env.items()]


def _python_command(module: str, args: list[str]) -> str:
    return shlex.join([".venv/bin/python", "-m", module, *args])


def _guard_training_stopped() -> str:
    return (
        'if [ -f "$LOGS/train.pid" ] && kill -0 -- "-$(cat "$LOGS/train.pid")" 2>/dev/null; then '
        'echo "$(hostname): training is still running (stop it first: launch.tpu stop)" >&2; '
        "exit 3; fi"
    )


def start_training(revision: str, env: dict[str, str], train_args: list[str]) -> str:
    """Start ``python -m mobiledet_jax.train <train_args>`` detached (own process group, nohup),
    appending to ``logs/train.log``; refuses if the code is not ``revision`` or training runs."""
    command = _python_command("mobiledet_jax.train", train_args)
    # The wrapper survives the SIGTERM sent to the group (`stop`, or the VM shutting down) long
    # enough to record the trainer's exit status; the trainer gets the signal itself.
    wrapped = f'trap : TERM; {command}; echo $? > "$LOGS/train.exit"'
    lines = _header() + [
        'CODE="$ROOT/current"',
        f'test "$(cat "$CODE/REVISION")" = {q(revision)} '
        f'|| {{ echo "$(hostname): installed code is not {revision[:12]}" >&2; exit 1; }}',
        _guard_training_stopped(),
        'rm -f "$LOGS/train.exit"',
        'cd "$CODE"',
        "export LOGS",
        *_env_exports(env),
        f'printf "[launch] %s %s revision {revision[:12]}: %s\\n" "$(date -u +%FT%TZ)" '
        f'"$(hostname)" {q(command)} >> "$LOGS/train.log"',
        f'nohup setsid bash -c {q(wrapped)} >> "$LOGS/train.log" 2>&1 < /dev/null &',
        'echo $! > "$LOGS/train.pid"',
        # setsid makes the group a moment after the fork: wait for it (or for a trainer that has
        # already exited), so that `status` and `stop` never see a started run as missing.
        'for _ in $(seq 200); do kill -0 -- "-$!" 2>/dev/null && break; '
        '[ -f "$LOGS/train.exit" ] && break; sleep 0.05; done',
        'echo "$(hostname): training started (pid $!), log $LOGS/train.log"',
    ]
    return "\n".join(lines)


def status(lines: int = 20) -> str:
    """``@@status RUNNING <pid>`` / ``@@status EXITED <code>`` / ``@@status NOT_STARTED``, then the
    last ``lines`` lines of the training log."""
    return "\n".join(
        [
            f'LOGS="{LOGS}"',
            'if [ -f "$LOGS/train.pid" ] && { kill -0 -- "-$(cat "$LOGS/train.pid")" || '
            'kill -0 "$(cat "$LOGS/train.pid")"; } 2>/dev/null; '
            'then echo "@@status RUNNING $(cat "$LOGS/train.pid")"',
            'elif [ -f "$LOGS/train.exit" ]; then echo "@@status EXITED $(cat "$LOGS/train.exit")"',
            'elif [ -f "$LOGS/train.pid" ]; then echo "@@status EXITED killed"',
            'else echo "@@status NOT_STARTED"; fi',
            f'tail -n {int(lines)} "$LOGS/train.log" 2>/dev/null || true',
        ]
    )


def stop() -> str:
    """SIGTERM to the training process group (the trainer checkpoints on SIGTERM), then wait."""
    return "\n".join(
        [
            f'LOGS="{LOGS}"',
            'if [ -f "$LOGS/train.pid" ] && kill -0 -- "-$(cat "$LOGS/train.pid")" 2>/dev/null; then',
            '  kill -TERM -- "-$(cat "$LOGS/train.pid")"',
            '  for _ in $(seq 600); do kill -0 -- "-$(cat "$LOGS/train.pid")" 2>/dev/null || break; '
            "sleep 0.2; done",
            '  echo "$(hostname): training stopped"',
            'else echo "$(hostname): no training running"; fi',
        ]
    )


def tail(lines: int, follow: bool) -> str:
    return f'tail -n {int(lines)}{" -F" if follow else ""} "{LOGS}/train.log"'


def evaluate(env: dict[str, str], eval_args: list[str]) -> str:
    """``python -m mobiledet_jax.evaluate`` in the foreground on every worker (the TPU is busy while
    training runs, so this refuses until it has stopped)."""
    return "\n".join(
        _header()
        + [
            _guard_training_stopped(),
            'cd "$ROOT/current"',
            *_env_exports(env),
            f"{_python_command('mobiledet_jax.evaluate', eval_args)} 2>&1 "
            '| tee -a "$LOGS/evaluate.log"',
        ]
    )


def export(export_args: list[str], output_name: str) -> str:
    """``python -m mobiledet_jax.export`` on the host CPU (``JAX_PLATFORMS=cpu``: it needs no TPU,
    and can run while training does), writing ``$ROOT/exports/<output_name>``."""
    out = f"{ROOT}/exports/{output_name}"
    return "\n".join(
        _header()
        + [
            'mkdir -p "$ROOT/exports"',
            'cd "$ROOT/current"',
            "export JAX_PLATFORMS=cpu",
            f'{_python_command("mobiledet_jax.export", export_args)} --output="{out}" 2>&1 '
            '| tee -a "$LOGS/export.log"',
            f'echo "@@exported {out}"',
        ]
    )


def exported_path(output_name: str) -> str:
    """The export's path on worker 0, for ``scp`` (relative to the home directory)."""
    return f"mobiledet_jax_run/exports/{output_name}"
