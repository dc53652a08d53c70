"""The private temporary folders of data preparations, and their removal once their writer is gone.

Why: a preparation (the synthetic dataset, prepared TFRecord shards) writes into a hidden folder
beside its final one and renames it into place, so that concurrent preparers never expose half a
split. A preparation killed midway (SIGKILL, a full disk, a lost machine) left that folder behind
for good, gigabytes for COCO. Its name records the writer's host and process
(``.<final>.tmp-<host>-<pid>-<random>``), and every later start that uses the same final folder
removes the ones of this host whose process is gone, with an info line. Folders of another host (a
shared file system) are left alone: whether their writer still runs cannot be checked from here.
"""

import logging
import os
import pathlib
import shutil
import socket
import uuid


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "host"


def private_name(final: pathlib.Path) -> pathlib.Path:
    """Where a preparation of ``final`` writes before renaming (unique per process and call)."""
    final = pathlib.Path(final)
    return final.parent / f".{final.name}.tmp-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(final: pathlib.Path) -> list[pathlib.Path]:
    """Removes the temporary folders of ``final`` left by processes of this host that are gone."""
    final = pathlib.Path(final)
    prefix = f".{final.name}.tmp-"
    removed = []
    try:
        siblings = list(final.parent.iterdir()) if final.parent.is_dir() else []
    except OSError:
        return removed
    for path in siblings:
        if not path.name.startswith(prefix):
            continue
        parts = path.name[len(prefix) :].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue
        if int(parts[1]) == os.getpid() or _alive(int(parts[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        logging.info("removed the temporary folder of a killed preparation: %s", path)
        removed.append(path)
    return removed
