"""One writer per workdir (``workdir_lock``): a second run refuses at once naming the holder, a stale
lock of a dead process is taken over with a warning, a lock of another host is refused with the way
out. In-process with fake holder records, plus one real case: a live process holds the lock, the
train command refuses, then the holder is killed (-9) and its lock is taken over."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from mobiledet_jax import workdir_lock
from mobiledet_jax.config import ConfigError
from tests.helpers import train_harness as th


def _fake_holder(workdir, **fields) -> dict:
    holder = {
        "host": socket.gethostname(),
        "pid": 1,  # init: always alive
        "started": "2025-01-02T03:04:05+00:00",
        "boot_id": workdir_lock.boot_id(),
        "process_start": None,
        "command": "python -m mobiledet_jax.train --workdir=w",
        **fields,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
    return holder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_taken_and_released(tmp_path):
    work = tmp_path / "new" / "run"  # created by the lock
    lock = workdir_lock.WorkdirLock(work).acquire()
    holder = json.loads((work / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert {"started", "boot_id", "command"} <= set(holder)
    lock.release()
    assert not (work / ".lock").exists()
    lock.release()  # idempotent


def test_a_live_holder_is_refused_naming_host_pid_and_start(tmp_path):
    holder = _fake_holder(tmp_path)
    before = (tmp_path / ".lock").read_bytes()
    t0 = time.monotonic()
    with pytest.raises(workdir_lock.WorkdirBusy) as e:
        workdir_lock.WorkdirLock(tmp_path).acquire()
    assert time.monotonic() - t0 < 1.0
    message = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in message
    assert f"{holder['host']} PID 1, started {holder['started']}" in message
    assert "another --workdir" in message
    assert (tmp_path / ".lock").read_bytes() == before  # the holder's lock is untouched


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = _dead_pid()
    _fake_holder(tmp_path, pid=dead)
    with caplog.at_level(logging.WARNING):
        lock = workdir_lock.WorkdirLock(tmp_path).acquire()
    assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert any(
        "stale lock" in r.getMessage() and f"PID {dead}" in r.getMessage() for r in caplog.records
    )
    lock.release()


@pytest.mark.parametrize(
    "fields",
    [
        {"boot_id": "another-boot"},  # the machine rebooted since: its PIDs mean nothing now
        {"process_start": "1"},  # PID 1 is alive but started at another time: a reused PID
        {"pid": "not a pid"},
    ],
)
def test_other_stale_records_are_taken_over(tmp_path, fields):
    if "boot_id" in fields and workdir_lock.boot_id() is None:
        pytest.skip("no boot id on this platform")
    if "process_start" in fields and workdir_lock.process_start(1) in (None, "1"):
        pytest.skip("no /proc start times here")
    _fake_holder(tmp_path, **fields)
    lock = workdir_lock.WorkdirLock(tmp_path).acquire()
    assert lock.held
    lock.release()


def test_a_lock_of_another_host_is_refused_with_the_way_out(tmp_path):
    _fake_holder(tmp_path, host="tpu-worker-7", pid=_dead_pid())  # cannot be checked from here
    with pytest.raises(workdir_lock.WorkdirBusy, match=r"tpu-worker-7 PID \d+") as e:
        workdir_lock.WorkdirLock(tmp_path).acquire()
    assert f"delete {tmp_path / '.lock'}" in str(e.value)


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = workdir_lock.WorkdirLock(tmp_path).acquire()
    _fake_holder(tmp_path, pid=1)  # someone removed ours and took it
    lock.release()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == 1


HOLDER = """
import sys, time
from mobiledet_jax.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_train_refuses_a_workdir_held_by_a_live_process_then_takes_it_when_killed(tmp_path):
    work = tmp_path / "run"
    env = th.environment(tmp_path / "jax_cache")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(work)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        proc = th.run(work, th.tiny_overrides(tmp_path / "data", 3), env, timeout=300)
        elapsed = time.monotonic() - t0
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train: ")]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert f"{socket.gethostname()} PID {holder.pid}, started" in lines[0]
        assert not (tmp_path / "data").exists(), "refused before any data was prepared"
        assert elapsed < 60, elapsed  # the imports; nothing was prepared or compiled
    finally:
        holder.kill()  # SIGKILL: the lock stays behind, stale
        holder.wait()
    assert json.loads((work / ".lock").read_text())["pid"] == holder.pid
    lock = workdir_lock.WorkdirLock(work).acquire()  # a dead PID on this host: taken over
    assert json.loads((work / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
