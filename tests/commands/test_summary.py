"""``python -m mobiledet_jax.summary`` end to end: the table, the block diagram PNG and the JSON."""

import json
import os
import pathlib
import struct
import subprocess
import sys

from mobiledet_jax.models import architecture_summary

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CPU_VARIABLES = 4_205_423  # SPEC section 6: MobileDet-CPU, all variables


def test_command_line_writes_table_png_and_json(tmp_path):
    png, js = tmp_path / "blocks.png", tmp_path / "summary.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobiledet_jax.summary",
            "--config=configs/mobiledet_cpu.py",
            "--config.model.image_height=256",
            f"--png={png}",
            f"--json={js}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "input 256x320" in result.stdout and "4,205,423" in result.stdout
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 800 and height > 300
    data = json.loads(js.read_text())
    assert data["model"] == "mobiledet_cpu" and data["input_hw"] == [256, 320]
    assert data["total"]["params"] == CPU_VARIABLES
    assert data["rows"][0]["label"] == "Conv k3" and data["rows"][0]["out_hw"] == [128, 160]
    assert set(data["groups"]) == set(architecture_summary.GROUPS)
