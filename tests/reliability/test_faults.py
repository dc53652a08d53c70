"""Faults end in one line: a full disk, a permission error or a lost coordinator (also when a
library wraps it in its own error) is one line naming the cause, and for ``train`` the last good
checkpoint, with exit status 4; Ctrl-C is 130. Ctrl-C stops training like SIGTERM (the second one
at once). Temporary folders of killed saves and preparations are removed at the next start.

In-process and cheap: no training (the training runs are in ``test_checkpoint_resume.py``).
"""

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mobiledet_jax import checkpoint_integrity as integrity
from mobiledet_jax import command_line
from mobiledet_jax import config as config_lib
from mobiledet_jax.data import synthetic, temporaries

STEP_ITEMS = ("model", "train", "meta")


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/w/ckpt/6/x"),
         "no space left on device at /w/ckpt/6/x"),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/w/a"), "no space left on device at /w/a"),
        # tensorstore / orbax carry only the text of the OS error
        (_wrapped(ValueError("Error writing local file \"/w/ckpt/6/d/abc\": [OS error 28: No "
                             "space left on device]"), RuntimeError("async save failed")),
         "no space left on device at /w/ckpt/6/d/abc"),
        # TensorFlow (the input state), as a real full disk raised it
        (RuntimeError("RESOURCE_EXHAUSTED: /w/input_state/4/input_process_00000_of_00001_temp/"
                      "part-00000-of-00001.data-00000-of-00001.tempstate1211; No space left on "
                      "device"),
         "no space left on device at /w/input_state/4/input_process_00000_of_00001_temp/"
         "part-00000-of-00001.data-00000-of-00001.tempstate1211"),
        (PermissionError(errno.EACCES, "Permission denied", "/w/c"), "permission denied: /w/c"),
        (OSError(errno.EROFS, "Read-only file system", "/w"), "permission denied: /w"),
        (RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service"),
         "lost the jax.distributed coordinator: UNAVAILABLE: Failed to send RPC to coordination "
         "service"),
        (integrity.CheckpointError("no usable checkpoint in /w (step 2: empty folder)"),
         "no usable checkpoint in /w (step 2: empty folder)"),
        (ValueError("a bug"), None),
        (FileNotFoundError(errno.ENOENT, "No such file", "/x"), None),
    ],
)  # fmt: skip
def test_fault_message(error, expected):
    assert command_line.fault_message(error) == expected


def _fake_step(root, step):
    """A step folder as training writes it (items and a manifest; never restored here)."""
    for item in STEP_ITEMS:
        (root / "checkpoints" / str(step) / item).mkdir(parents=True)
        (root / "checkpoints" / str(step) / item / "data").write_bytes(os.urandom(256))
    integrity.write_manifest(root / "checkpoints" / str(step))


def test_train_exit_lines_name_the_last_good_checkpoint(tmp_path):
    from mobiledet_jax import train
    from mobiledet_jax.training.preemption import Interrupted

    work = tmp_path / "w"
    _fake_step(work, 2)
    _fake_step(work, 4)
    (work / "checkpoints" / "4" / "model" / "data").write_bytes(b"x" * 256)  # same size, garbled
    step2 = work / "checkpoints" / "2"
    full = OSError(errno.ENOSPC, "No space left on device", str(work / "input_state" / "6"))
    line, code = train.exit_line(full, str(work))
    assert code == command_line.FAULT == 4
    assert line == (
        f"no space left on device at {work}/input_state/6; "
        f"the last good checkpoint is step 2 ({step2})"
    )
    denied = PermissionError(errno.EACCES, "Permission denied", str(work))
    assert train.exit_line(denied, str(work))[0].startswith(f"permission denied: {work}; the last")
    assert train.exit_line(Interrupted(7), str(work)) == ("interrupted: saved step 7", 130)
    assert train.exit_line(KeyboardInterrupt(), str(work)) == (
        f"interrupted; the last good checkpoint is step 2 ({step2})",
        130,
    )
    no_step = integrity.CheckpointError("no usable checkpoint in x (step 4: empty folder)")
    assert train.exit_line(no_step, str(work)) == (str(no_step), 4)
    assert train.exit_line(FloatingPointError("loss is nan at step 3"), str(work))[1] == 3
    assert train.exit_line(ValueError("a bug"), str(work)) is None  # its traceback is shown
    empty = tmp_path / "empty"
    assert train.exit_line(full, str(empty))[0].endswith(
        f"no usable checkpoint in {empty}/checkpoints"
    )


@pytest.mark.parametrize(
    "raised, code, line",
    [
        ("OSError(errno.ENOSPC, 'No space left on device', '/full/disk')", 4,
         "prog: no space left on device at /full/disk"),
        ("KeyboardInterrupt()", 130, "prog: interrupted"),
    ],
)  # fmt: skip
def test_every_command_turns_faults_into_one_line(tmp_path, raised, code, line):
    """``command_line.run`` (evaluate, export, predict, ...): no traceback, nor tensorstore's
    tracebacks of closed event loops."""
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(f"""
        import errno
        import sys
        import types
        from mobiledet_jax import command_line

        def main(argv):
            try:  # what tensorstore prints once per array after a failed orbax save
                raise RuntimeError("Event loop is closed")
            except RuntimeError:
                sys.excepthook(*sys.exc_info())
                t, e, tb = sys.exc_info()
                sys.unraisablehook(types.SimpleNamespace(
                    exc_type=t, exc_value=e, exc_traceback=tb, err_msg=None, object=None))
            raise {raised}

        command_line.run(main)
    """)
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=os.getcwd())  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines() == [line]


def test_sigint_stops_like_sigterm_and_a_second_one_at_once(caplog):
    from mobiledet_jax.training.preemption import Interrupted, PreemptionWatcher

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    watcher = PreemptionWatcher()
    try:
        assert not watcher.should_stop(1)
        watcher.stopped(1)  # nothing asked: returns
        os.kill(os.getpid(), signal.SIGINT)
        assert watcher.should_stop(2) and watcher.interrupted
        with pytest.raises(Interrupted, match="interrupted: saved step 2"):
            watcher.stopped(2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        watcher.close()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    term = PreemptionWatcher()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert term.should_stop(3) and not term.interrupted
        term.stopped(3)  # SIGTERM: the run ends normally (exit 0)
    finally:
        term.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_killed_preparations_leave_nothing_behind(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    final = tmp_path / "cache" / synthetic_name(2, 2)
    host = temporaries.private_name(final).name.split(".tmp-")[1].rsplit("-", 2)[0]
    dead = final.parent / f".{final.name}.tmp-{host}-{_dead_pid()}-0badf00d"
    alive = final.parent / f".{final.name}.tmp-{host}-{os.getppid()}-0badf00d"
    elsewhere = final.parent / f".{final.name}.tmp-otherhost-{_dead_pid()}-0badf00d"
    for d in (dead, alive, elsewhere):
        (d / "train" / "images").mkdir(parents=True)
    synthetic.ensure_synthetic(tmp_path / "cache", num_train=2, num_val=2)
    assert not dead.exists(), "the folder of a killed preparation of this host is removed"
    assert alive.exists() and elsewhere.exists(), "running or unknown writers are left alone"
    assert any(f"killed preparation: {dead}" in r.getMessage() for r in caplog.records)
    assert final.is_dir()


def synthetic_name(num_train, num_val):
    return f"synthetic_v{synthetic.FORMAT_VERSION}_seed0_{num_train}_{num_val}"


def test_interrupted_saves_are_removed_at_the_next_start(tmp_path, caplog):
    from mobiledet_jax.training.checkpointing import TrainCheckpointer

    caplog.set_level(logging.INFO)
    work = tmp_path / "w"
    _fake_step(work, 4)
    tmp_step = work / "checkpoints" / "6.orbax-checkpoint-tmp-1764000000"
    tmp_best = work / "best" / "checkpoints" / "5.orbax-checkpoint-tmp-1764000000"
    for d in (tmp_step / "model", tmp_best, work / "input_state" / "4", work / "input_state" / "6"):
        d.mkdir(parents=True)
    config = config_lib.base_config()
    TrainCheckpointer(str(work), config.checkpoint, config.model).close()
    assert not tmp_step.exists() and not tmp_best.exists()
    assert not (work / "input_state" / "6").exists(), "the input state of the killed save of 6"
    assert (work / "input_state" / "4").exists() and (work / "checkpoints" / "4").exists()
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("removed the temporary folder of an interrupted save") for m in logged)


def test_library_errors_on_the_console_keep_their_message_not_their_traceback(monkeypatch):
    """A full disk made orbax's threads log one traceback per array before the one line."""
    from mobiledet_jax import console_logs

    monkeypatch.delenv("MOBILEDET_LIBRARY_LOGS", raising=False)
    absl_logger = logging.getLogger("absl")
    before = list(absl_logger.filters)
    try:
        console_logs.setup()
        try:
            raise ValueError("RESOURCE_EXHAUSTED: No space left on device")
        except ValueError:
            info = sys.exc_info()
        orbax = os.path.join("site-packages", "orbax", "checkpoint", "future.py")
        record = logging.LogRecord("absl", logging.ERROR, orbax, 1, "save failed", None, info)
        assert absl_logger.filter(record) and record.exc_info is None
        own = logging.LogRecord("absl", logging.ERROR, "mobiledet_jax/x.py", 1, "m", None, info)
        assert absl_logger.filter(own) and own.exc_info is info
    finally:
        absl_logger.filters[:] = before
