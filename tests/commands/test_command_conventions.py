"""Every command behaves alike (mobiledet_jax.command_line): --help exits 0, a bad flag exits 2,
a mistyped config key is one line on stderr with exit 2, --json=<path> writes parseable JSON, and
the `mobiledet` console script dispatches to the same modules."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from mobiledet_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "quickstart.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}

# command -> the flags it needs besides the one under test (so that only that one is wrong)
NEEDS = {
    "train": [f"--config={CONFIG}", "--workdir=wd"],
    "evaluate": [f"--config={CONFIG}", "--workdir=wd"],
    "export": [f"--config={CONFIG}", "--workdir=wd", "--output=x.tflite"],
    "predict": ["--model=wd", "--source=x.jpg", "--output=out"],
    "import-tf1": ["--model=edgetpu", "--checkpoint=x", "--workdir=wd"],
    "validate-data": ["--annotations=a.json", "--images=img"],
    "browse-data": [f"--config={CONFIG}", "--output=out"],
    "convert-data": ["--from=yolo", "--data=d.yaml", "--output=out"],
    "summary": [f"--config={CONFIG}"],
    "aot-compile": [f"--config={CONFIG}", "--topology=v5e-4"],
    "preflight": ["--model=x.tflite", "--target=edgetpu"],
    "latency-table": ["--space=test", "--image_size=64", "--output=t.json"],
    "search": [f"--config={REPO / 'configs' / 'search_test.py'}", "--workdir=wd"],
    "launch": [],
}
WITH_CONFIG = ("train", "evaluate", "export", "browse-data", "summary", "aot-compile", "search")


def run(command: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    module = cli.COMMANDS[command][0]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


def stderr_lines(proc) -> list[str]:
    """What the command itself wrote (library start-up noise of TF/absl filtered)."""
    noise = ("WARNING: All log", "oneDNN", "I0000", "W0000", "E0000", "cuda", "TF_ENABLE")
    return [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(noise)]


def test_every_command_is_in_the_table():
    assert set(NEEDS) == set(cli.COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(NEEDS))
def test_help_exits_0_and_a_bad_flag_exits_2(command, tmp_path):
    helped = run(command, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--" in helped.stdout  # the flags are listed
    if command == "launch":  # argparse subcommands: a bad subcommand is the usage error
        bad = run(command, "no_such_command", cwd=tmp_path)
    else:
        bad = run(command, *NEEDS[command], "--no_such_flag=1", cwd=tmp_path)
    assert bad.returncode == 2, (bad.stdout[-1000:], bad.stderr[-2000:])
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", WITH_CONFIG)
def test_a_config_typo_is_one_line_and_exit_2(command, tmp_path):
    proc = run(command, *NEEDS[command], "--config.train.num_stepz=3", cwd=tmp_path)
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert len(lines) == 1, lines
    assert "num_stepz" in lines[0] and "num_steps" in lines[0]  # the suggestion


@pytest.mark.slow
def test_print_config_prints_the_resolved_flat_config(tmp_path):
    proc = run("train", f"--config={CONFIG}", "--config.train.num_steps=7", "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train.num_steps = 7" in proc.stdout.splitlines()
    assert "detection.nms.iou_threshold = 0.6" in proc.stdout.splitlines()


@pytest.mark.slow
def test_json_writes_parseable_json(tmp_path):
    out = tmp_path / "summary.json"
    proc = run("summary", f"--config={REPO / 'configs' / 'mobiledet_cpu.py'}", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["total"]["params"] == 4_205_423
    to_stdout = run("summary", f"--config={REPO / 'configs' / 'mobiledet_cpu.py'}", "--json=-")
    assert json.loads(to_stdout.stdout)["total"]["params"] == 4_205_423


def test_console_script_dispatches(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["no-such-command"])
    assert e.value.code == 2
    called = {}
    monkeypatch.setattr(cli.runpy, "run_module", lambda m, **kw: called.setdefault("m", m))
    cli.main(["validate_data", "--help"])  # underscores work too
    assert called["m"] == "mobiledet_jax.validate_data"
