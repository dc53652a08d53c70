"""Damage done to a checkpoint step folder on disk, as a failing disk or a careless hand does it
(the fault-injection tests of tests/reliability/)."""

import os
import shutil


def _largest_file(step_dir, item="model"):
    files = [p for p in (step_dir / item).rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def garble(step_dir):
    """64 bytes flipped in the middle of the largest array file: same length, other content."""
    path = _largest_file(step_dir)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def truncate(step_dir):
    path = _largest_file(step_dir)
    os.truncate(path, path.stat().st_size // 2)


def empty(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()
