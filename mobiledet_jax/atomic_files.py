"""Files a user keeps are replaced whole or not at all: written beside, then renamed over the old one.

Why: a training run, an export or a data preparation can be killed (SIGKILL, preemption, a full
disk) in the middle of a write. Writing straight to the final name leaves a 0-byte or truncated
``.tflite``, ``config.json`` or report there, and the previous good file is already gone. Here
every write goes to a temporary file in the same folder (``.<name>.tmp-<pid>-<random>``, hidden so
that globs such as ``*.tflite`` do not see it), is flushed and fsynced, and only then renamed onto
the final name with ``os.replace``, which is atomic on POSIX file systems: a reader sees the old
file or the new one, never a part. A failed write (an exception, ENOSPC) removes its temporary file
and leaves the previous file intact; a killed one leaves only its hidden temporary file behind.

URLs (``gs://...``, through ``etils.epath``) are written the same way, beside and then renamed. On
object stores a rename is a copy and a delete, not atomic, but an object appears only once its
upload is complete, so a failed or killed write still never shows a part under the final name.

- ``write_bytes``, ``write_text``, ``write_json``: the whole content at once.
- ``replacing(path)``: a context manager yielding the temporary path, for writers that take a path
  (``np.save``, ``savefig``, ``tf.io`` writers); it is renamed into place when the block ends
  without an exception.
"""

import contextlib
import json
import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def _is_url(path: PathLike) -> bool:
    return "://" in os.fspath(path)


def _path(path: PathLike):
    """epath for URLs, pathlib for local paths (os.replace and fsync need a real file)."""
    return epath.Path(os.fspath(path)) if _is_url(path) else pathlib.Path(os.fspath(path))


def temporary_name(path: PathLike) -> str:
    """The hidden name a write of ``path`` goes to first (unique per process and call)."""
    name = _path(path).name
    return f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_temporary(name: str) -> bool:
    """Whether a file name is a temporary of this module (left by a killed write)."""
    return name.startswith(".") and ".tmp-" in name


def _fsync_dir(directory: pathlib.Path) -> None:
    """Makes the rename itself durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: PathLike, *, durable: bool = True) -> Iterator[Any]:
    """Yields a temporary path beside ``path``; when the block succeeds, the file written there
    replaces ``path`` (fsynced first unless ``durable=False``). On an exception the temporary file
    is removed, ``path`` is left as it was, and the exception propagates. The folder is created."""
    final = _path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / temporary_name(final)
    try:
        yield tmp
        if _is_url(path):
            tmp.replace(final)
        else:
            if durable:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if durable:
                _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()
        raise


def write_bytes(path: PathLike, data: bytes, *, durable: bool = True):
    """Replaces ``path`` with ``data`` atomically; returns ``path`` as a Path."""
    with replacing(path, durable=durable) as tmp:
        if _is_url(path):
            tmp.write_bytes(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
    return _path(path)


def write_text(path: PathLike, text: str, *, durable: bool = True):
    """Replaces ``path`` with ``text`` (UTF-8) atomically; returns ``path`` as a Path."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path: PathLike, data: Any, *, durable: bool = True, **dumps_kwargs):
    """Replaces ``path`` with ``json.dumps(data, **dumps_kwargs)`` and a final newline."""
    return write_text(path, json.dumps(data, **dumps_kwargs) + "\n", durable=durable)
