"""One writer per workdir: an exclusive lock held for the life of a training run.

Why: two runs sharing a workdir overwrite each other's checkpoints and ``best/`` (or one of them dies
in a long orbax traceback hours in). The lock is ``<workdir>/.lock``, a JSON record of its holder
(host, PID, start time, boot id, command). A second run refuses at once, naming the holder
(``WorkdirBusy``, a ``ConfigError``: one line, exit 2). Only process 0 of a multi-host run takes it;
every process learns the outcome (``hold``), so all of them stop together.

- Local disks: the record is written to a temporary file and hard-linked to ``.lock``; the link
  fails if ``.lock`` exists, so exactly one of two concurrent starts wins and the file never holds
  a partial record (file systems without hard links fall back to ``O_CREAT | O_EXCL``).
- Stale locks: a lock whose holder ran on this host and is gone (its PID is not alive, the machine
  rebooted since — another boot id — or the PID now belongs to a process started at another time)
  is taken over with a warning. A lock of another host cannot be checked from here: it is refused,
  and the message says to delete the file if that run is known to be dead.
- URLs (``gs://``): object stores have no create-if-absent through ``etils.epath``, so the lock is
  check-then-write, then read back: two starts within the same second can both pass. Enough to
  stop the usual mistake (starting a second run on a workdir in use), not a guarantee.

The lock is released when the run ends (``release``, also registered with ``atexit``); a killed
run leaves it behind, and the next start on the same host takes it over.
"""

import atexit
import contextlib
import datetime
import json
import logging
import os
import pathlib
import socket
import sys
import time

from etils import epath

from mobiledet_jax import atomic_files
from mobiledet_jax.config import ConfigError

LOCK_FILE = ".lock"
_FRESH_S = 10.0  # an unreadable lock younger than this may be one being written: not stale


class WorkdirBusy(ConfigError):
    """The workdir is held by another training run (one line, exit 2)."""


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def boot_id() -> str | None:
    """This machine's boot id (Linux), so that a lock from before a reboot is known stale."""
    return _read_first_line("/proc/sys/kernel/random/boot_id")


def process_start(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc/<pid>/stat`` field 22)."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    if stat is None or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    except (OverflowError, ValueError):
        return False
    return True


def this_process() -> dict:
    """The holder record of this process."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "boot_id": boot_id(),
        "process_start": process_start(pid),
        "command": " ".join(sys.argv)[:300],
    }


def describe(holder: dict) -> str:
    """``host PID 123, started 2025-01-01T10:00:00+00:00``."""
    return (
        f"{holder.get('host', '?')} PID {holder.get('pid', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def is_stale(holder: dict) -> bool:
    """Whether the holder is known to be gone (only a holder on this host can be checked)."""
    if holder.get("host") != socket.gethostname():
        return False
    if holder.get("boot_id") and boot_id() and holder["boot_id"] != boot_id():
        return True  # the machine rebooted since
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if pid == os.getpid():
        return True  # this very process: an earlier run in it that did not release
    if not pid_alive(pid):
        return True
    started, now = holder.get("process_start"), process_start(pid)
    return bool(started and now and started != now)  # the PID was reused


class WorkdirLock:
    """``<workdir>/.lock`` of this process: ``acquire`` (raises WorkdirBusy), ``release``."""

    def __init__(self, workdir: str | os.PathLike):
        text = os.fspath(workdir)
        self._url = "://" in text
        # pathlib locally: os.link and os.rename need real files
        self.workdir = epath.Path(text) if self._url else pathlib.Path(os.path.abspath(text))
        self.path = self.workdir / LOCK_FILE
        self._record: str | None = None

    @property
    def held(self) -> bool:
        return self._record is not None

    def _busy(self, holder: dict | None) -> WorkdirBusy:
        who = describe(holder) if holder else "a run whose lock record cannot be read"
        command = f" ({holder['command']})" if holder and holder.get("command") else ""
        return WorkdirBusy(
            f"workdir {self.workdir} is in use by another training run: {who}{command}; wait for "
            f"it to end or use another --workdir (if you know that run is dead, delete {self.path})"
        )

    def _create(self, record: str) -> bool:
        """Creates ``.lock`` holding ``record`` if it does not exist; False if it does."""
        if self._url:
            if self.path.exists():
                return False
            self.path.write_text(record)
            time.sleep(0.5)  # another check-then-write in flight lands by now (see the docstring)
            return self.path.exists() and self.path.read_text() == record
        tmp = self.path.parent / atomic_files.temporary_name(self.path)
        tmp.write_text(record)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(record)
            return True
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _read(self) -> tuple[str, dict | None] | None:
        """(text, holder or None when unreadable) of the existing lock; None when there is none."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        return text, holder if isinstance(holder, dict) else None

    def _age_s(self) -> float:
        try:
            st = self.path.stat()
        except OSError:
            return float("inf")
        return time.time() - getattr(st, "st_mtime", getattr(st, "mtime", 0.0))

    def _take_over(self, text: str) -> None:
        """Removes the stale lock ``text`` (only that one: a run that took it over meanwhile
        keeps its own)."""
        if self._url:
            self.path.unlink(missing_ok=True)
            return
        aside = self.path.parent / atomic_files.temporary_name(self.path)
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another start removed it first
        try:
            if aside.read_text() != text:  # a fresh lock, not the stale one: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
        finally:
            aside.unlink(missing_ok=True)

    def acquire(self) -> "WorkdirLock":
        """Takes the lock (the workdir folder is created), or raises WorkdirBusy naming the
        holder. A stale lock of a dead process on this host is taken over with a warning."""
        if self.held:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        record = json.dumps(this_process(), indent=1)
        for _ in range(5):
            if self._create(record):
                self._record = record
                atexit.register(self.release)
                return self
            found = self._read()
            if found is None:
                continue  # released meanwhile: try again
            text, holder = found
            if holder is None and self._age_s() < _FRESH_S:
                time.sleep(0.2)  # being written by a start that fell back to O_EXCL
                continue
            if holder is not None and not is_stale(holder):
                raise self._busy(holder)
            if holder is None or holder.get("pid") != os.getpid():
                logging.warning(
                    "taking over the stale lock %s of %s (that process is gone)",
                    self.path,
                    describe(holder) if holder else "an unreadable record",
                )
            self._take_over(text)
        found = self._read()
        raise self._busy(found[1] if found else None)

    def release(self) -> None:
        """Removes the lock if it is still this process's (idempotent)."""
        if self._record is None:
            return
        record, self._record = self._record, None
        with contextlib.suppress(Exception):
            atexit.unregister(self.release)
        found = self._read()
        if found is None or found[0] != record:
            logging.warning("the lock %s is no longer this run's: left as it is", self.path)
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def hold(workdir: str | os.PathLike) -> WorkdirLock:
    """The workdir's lock for this job: process 0 takes it, every process learns the outcome and
    raises WorkdirBusy together (on the others the returned lock holds nothing)."""
    import jax

    lock = WorkdirLock(workdir)
    if jax.process_count() == 1:
        return lock.acquire()
    import numpy as np
    from jax.experimental import multihost_utils

    error = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirBusy as e:
            error = e
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is not None:
        raise error
    if not int(ok):
        raise WorkdirBusy(
            f"workdir {lock.workdir} is in use by another training run (process 0 names it)"
        )
    return lock
