"""Checkpoints you can trust: a checksum manifest per saved step, checked before every restore, and
the walk from the newest step to the newest one that is usable.

Why: orbax commits a step atomically (a temporary folder renamed into place) but never checks what
it reads back. Bytes garbled on disk restored silently as non-finite weights (training then stopped
with NaN at its first step after every restart, ``evaluate`` scored AP 0, ``export`` reported
parity "nan"), and a truncated file or an emptied step folder stopped every command with a
tensorstore traceback. Here:

- ``write_manifest(step_dir, extra)``: once a step is complete, ``<step>/checksums.json`` holds the
  size and SHA-256 of every file of the step folder, and of the folders in ``extra`` (training: the
  step's input-iterator state, ``<workdir>/input_state/<step>``); written atomically by process 0.
- ``check_step(step_dir, items, extra)``: the step folder holds the ``items`` it needs, and every
  file the manifest lists (of those items, and of ``extra``) has its size and checksum. A step
  without a manifest (written before manifests existed, or killed between orbax's commit and the
  manifest) is accepted when it restores and is finite.
- ``first_nonfinite(tree)``: the path of the first leaf with NaN/Inf (a restored state is checked
  before anything uses it).
- ``newest_usable(steps, attempt, where)``: tries ``attempt(step)`` from the newest step down; each
  step that fails (a ``check_step`` reason, an orbax error, a non-finite leaf) is a one-line
  warning ``checkpoint step N is unusable (<reason>): falling back to step M``; when none is
  usable, ``CheckpointError`` lists every step and why (the commands print it as one line).

``training.checkpointing`` (train resume) and ``workdir.load_model`` (evaluate, export, predict,
``init_from``) both go through here, so every consumer of a checkpoint applies the same rules.
SHA-256 reads about 1 GB/s on one core: a few hundred milliseconds per save of a full model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from etils import epath

MANIFEST = "checksums.json"
FORMAT = 1
_CHUNK = 1 << 20
T = TypeVar("T")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was needed (the message lists the steps and why)."""


class UnusableStep(Exception):
    """One step cannot be used; the message is the reason, short enough for one line."""


def _files(root: epath.Path, prefix: str = "") -> dict[str, epath.Path]:
    """Every file under ``root`` by its path relative to ``root`` (``/``-separated)."""
    out = {}
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            out.update(_files(child, rel + "/"))
        else:
            out[rel] = child
    return out


def _digest(path: epath.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _size(path: epath.Path) -> int:
    stat = path.stat()  # os.stat_result locally; etils' StatResult (``length``) for URLs
    return stat.st_size if hasattr(stat, "st_size") else stat.length


def _listing(root: epath.Path, skip: str | None = None) -> dict[str, list]:
    files = _files(root) if root.is_dir() else {}
    return {rel: [_size(p), _digest(p)] for rel, p in files.items() if rel != skip}


def write_manifest(step_dir, extra: Mapping[str, Any] | None = None) -> epath.Path:
    """``<step_dir>/checksums.json``: size and SHA-256 of every file of ``step_dir`` and of each
    folder in ``extra`` (``{name: folder}``). Call it once the step is complete (process 0)."""
    from mobiledet_jax import atomic_files

    step_dir = epath.Path(step_dir)
    folders = {".": _listing(step_dir, skip=MANIFEST)}
    for name, folder in (extra or {}).items():
        folders[name] = _listing(epath.Path(folder))
    path = step_dir / MANIFEST
    atomic_files.write_json(path, {"format": FORMAT, "folders": folders}, separators=(",", ":"))
    return path


def _verify(name: str, root: epath.Path, listed: Mapping[str, list], wanted) -> None:
    for rel, (size, digest) in sorted(listed.items()):
        if not wanted(rel):
            continue
        shown = rel if name == "." else f"{name}/{rel}"
        path = root / rel
        try:
            actual = _size(path) if path.exists() else None
            if actual is None:
                raise UnusableStep(f"{shown} is missing")
            if actual != size:
                what = "truncated" if actual < size else "longer than written"
                raise UnusableStep(f"{shown} is {what} ({actual} of {size} bytes)")
            if _digest(path) != digest:
                raise UnusableStep(f"checksum mismatch in {shown}")
        except OSError as e:
            raise UnusableStep(f"{shown} is unreadable ({e.strerror or e})") from e


def check_step(
    step_dir,
    items: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> bool:
    """Raises ``UnusableStep`` when ``step_dir`` lacks one of ``items`` (orbax item folders) or a
    file its manifest lists differs (only files of ``items``, of the step folder's top level and of
    the ``extra`` folders are checked; ``verify=False``: the items only, no file is read). Returns
    whether the step had a manifest."""
    step_dir = epath.Path(step_dir)
    try:
        if not step_dir.is_dir():
            raise UnusableStep("not a folder")
        if not any(True for _ in step_dir.iterdir()):
            raise UnusableStep("empty folder")
        for item in items:
            item_dir = step_dir / item
            if not item_dir.is_dir() or not any(True for _ in item_dir.iterdir()):
                raise UnusableStep(f"incomplete: no {item!r} item")
        manifest_file = step_dir / MANIFEST
        if not manifest_file.exists() or not verify:
            return manifest_file.exists()
        try:
            manifest = json.loads(manifest_file.read_text())
            folders = manifest["folders"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise UnusableStep(f"its {MANIFEST} is unreadable") from e
    except OSError as e:
        raise UnusableStep(f"unreadable ({e.strerror or e})") from e

    def in_items(rel: str) -> bool:  # a top-level file, or a file of one of ``items``
        return "/" not in rel or not items or rel.split("/", 1)[0] in items

    _verify(".", step_dir, folders.get(".", {}), in_items)
    for name, folder in (extra or {}).items():
        if name in folders:
            _verify(name, epath.Path(folder), folders[name], lambda rel: True)
    return True


def _finite(leaf) -> bool:
    import jax
    import jax.numpy as jnp
    import numpy as np

    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        return True
    if isinstance(leaf, jax.Array):
        seen, parts = set(), []
        for shard in leaf.addressable_shards:  # a replicated array: one copy checked
            key = str(shard.index)
            if key not in seen:
                seen.add(key)
                parts.append(shard.data)
    else:
        parts = [leaf]
    return all(bool(np.isfinite(np.asarray(p).astype(np.float32)).all()) for p in parts)


def first_nonfinite(tree) -> str | None:
    """The path of the first leaf of ``tree`` holding NaN or Inf, or None when all are finite."""
    import jax

    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not _finite(leaf):
            return jax.tree_util.keystr(path, simple=True, separator="/")
    return None


def check_finite(tree, what: str = "") -> None:
    """Raises ``UnusableStep`` naming the first non-finite leaf of ``tree``."""
    bad = first_nonfinite(tree)
    if bad is not None:
        raise UnusableStep(f"non-finite values in {what}{bad}")


def _reason(e: BaseException) -> str:
    """One short line for a step's failure: the check's reason, or the first line of an error."""
    if isinstance(e, UnusableStep):
        return str(e)
    text = " ".join(str(e).split("See full TensorStore details")[0].split())
    text = text[:160] + ("..." if len(text) > 160 else "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _all_processes_agree(ok: bool) -> bool:
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def newest_usable(
    steps: Iterable[int],
    attempt: Callable[[int], T],
    where: str,
    *,
    collective: bool = False,
    hint: str = "",
) -> tuple[T, list[tuple[int, str]]]:
    """``attempt(step)`` of the newest step it succeeds on, and the ``(step, reason)`` of the newer
    steps skipped (each a warning). ``collective``: every process calls this and a step counts only
    if it succeeded on all of them. Raises ``CheckpointError`` when no step is usable."""
    order = sorted(set(steps), reverse=True)
    skipped: list[tuple[int, str]] = []
    for i, step in enumerate(order):
        reason = "unusable on another process"
        try:
            result, ok = attempt(step), True
        except Exception as e:  # noqa: BLE001 - any failure to restore makes the step unusable
            ok, reason = False, _reason(e)
        if collective:
            ok = _all_processes_agree(ok)
        if ok:
            return result, skipped
        skipped.append((step, reason))
        if i + 1 < len(order):
            logging.warning(
                "checkpoint step %d is unusable (%s): falling back to step %d",
                step, reason, order[i + 1],
            )  # fmt: skip
        else:
            logging.warning("checkpoint step %d is unusable (%s)", step, reason)
    if len(skipped) == 1 and len(order) == 1:
        step, reason = skipped[0]
        message = f"checkpoint step {step} in {where} is unusable ({reason})"
    else:
        listed = "; ".join(f"step {s}: {r}" for s, r in skipped) or "no steps"
        message = f"no usable checkpoint in {where} ({listed})"
    raise CheckpointError(f"{message}{'; ' + hint if hint else ''}")


def last_good_step(directory, items: Sequence[str] = ()) -> int | None:
    """The newest step folder of ``directory`` that passes ``check_step`` (no restore: for the
    messages of a failed run), or None."""
    directory = epath.Path(directory)
    try:
        steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)
    except OSError:
        return None
    for step in steps:
        try:
            check_step(directory / str(step), items)
            return step
        except UnusableStep:
            continue
    return None


def set_aside(folder, destination_root) -> epath.Path | None:
    """Moves ``folder`` into ``destination_root`` (a unique name there) so that nothing reads it
    as a step again; returns where it went (None when there was nothing to move)."""
    folder, root = epath.Path(folder), epath.Path(destination_root)
    if not folder.exists():
        return None
    root.mkdir(parents=True, exist_ok=True)
    target = root / folder.name
    if target.exists():
        target = root / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder.rename(target)
    return target


def remove_stale_step_folders(root, kept_steps) -> None:
    """Removes the ``<root>/<step>`` folders of steps no longer kept and older than the newest kept
    one (the input positions of checkpoints orbax has deleted); process 0 only."""
    import jax

    root = epath.Path(root)
    if jax.process_index() != 0 or not root.exists():
        return
    keep = set(kept_steps)
    latest = max(keep, default=-1)
    for d in root.iterdir():
        if d.name.isdigit() and int(d.name) not in keep and int(d.name) < latest:
            shutil.rmtree(str(d), ignore_errors=True)
