"""Files a user keeps are replaced whole or not at all (``atomic_files``): a write that fails midway
(ENOSPC injected after half the bytes) or is killed with SIGKILL leaves the previous file intact,
for the writers of exports, reports, sidecars, ``config.json``, labels and ``--json`` results."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from mobiledet_jax import atomic_files
from tests.helpers import train_harness as th


class _FullDisk:
    """``open`` whose files write half of what they are given, then raise ENOSPC."""

    def __init__(self):
        self.real = open

    def __call__(self, path, mode="r", *args, **kwargs):
        f = self.real(path, mode, *args, **kwargs)
        if "w" not in mode:
            return f
        write = f.write

        def half_then_full(data):
            write(data[: len(data) // 2])
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = half_then_full
        return f


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if atomic_files.is_temporary(p.name)]


def test_write_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "model.tflite"
    atomic_files.write_bytes(path, b"first")
    atomic_files.write_bytes(path, b"second version")
    assert path.read_bytes() == b"second version"
    atomic_files.write_json(tmp_path / "r.json", {"a": 1}, indent=1)
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    with atomic_files.replacing(tmp_path / "anchors.npy") as tmp:
        tmp.write_bytes(b"npy")
    assert (tmp_path / "anchors.npy").read_bytes() == b"npy"
    assert _leftovers(tmp_path) == [] and _leftovers(path.parent) == []


def test_a_failed_block_keeps_the_previous_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("previous")
    with pytest.raises(RuntimeError), atomic_files.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("converter crashed")
    assert path.read_text() == "previous" and _leftovers(tmp_path) == []


def _writers(tmp_path):
    """(name, the file, a call that writes it) of every writer of files a user keeps."""
    from mobiledet_jax import command_line
    from mobiledet_jax import workdir as workdir_lib
    from mobiledet_jax.export import bundle, exporter, report
    from tests.helpers.tiny_configs import tiny_config

    out = tmp_path / "model.tflite"
    config = tiny_config(tmp_path / "cache")
    opts = exporter.ExportOptions()
    yield (
        "config.json",
        tmp_path / "config.json",
        lambda: workdir_lib.write_config(config, str(tmp_path)),
    )
    yield (
        "labels.txt",
        tmp_path / "labels.txt",
        lambda: workdir_lib.write_labels(str(tmp_path), ["a", "b"]),
    )
    yield (
        "report.json",
        out.with_name("model.tflite.report.json"),
        lambda: report.write({"x": 1}, out),
    )
    yield (
        "labels sidecar",
        out.with_name("model.tflite.labels.txt"),
        lambda: bundle.write(out, ["a"], opts, (96, 96), None),
    )
    yield (
        "--json",
        tmp_path / "result.json",
        lambda: command_line.write_json(str(tmp_path / "result.json"), {"AP": 0.5}),
    )
    yield ".tflite", out, lambda: atomic_files.write_bytes(out, b"\x00" * 4096)  # exporter's call


def test_a_full_disk_midway_leaves_every_previous_file_intact(tmp_path, monkeypatch):
    writers = list(_writers(tmp_path))
    for _, path, _ in writers:
        path.write_bytes(b"the previous good file")
    monkeypatch.setattr(atomic_files, "open", _FullDisk(), raising=False)
    for name, path, write in writers:
        with pytest.raises(OSError) as e:
            write()
        assert e.value.errno == errno.ENOSPC, name
        assert path.read_bytes() == b"the previous good file", name
    assert _leftovers(tmp_path) == []


SLOW_WRITER = """
import builtins, sys, time
from mobiledet_jax import atomic_files

def slow_open(path, mode="r", *args, **kwargs):  # the disk stalls after half of the file
    f = builtins.open(path, mode, *args, **kwargs)
    write = f.write
    def stall(data):
        write(data[: len(data) // 2])
        f.flush()
        print("writing", flush=True)
        time.sleep(600)
    f.write = stall
    return f

atomic_files.open = slow_open
atomic_files.write_bytes(sys.argv[1], b"\\x01" * 2_000_000)  # what the exporter calls
"""


def test_kill_9_during_an_export_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous export")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(path)],
        env=th.environment(tmp_path / "jax_cache"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == b"previous export"
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".model.tflite.tmp-")  # hidden, not *.tflite
    assert sorted(p.name for p in tmp_path.glob("*.tflite")) == ["model.tflite"]
