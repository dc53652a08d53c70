"""EdgeTPU / DSP delegate rules (the preflight) on real exports, a float model, an unsupported op
and an edited file."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.export import convert, delegate_rules, postprocess_op
from mobiledet_jax.models import build_model, random_weights
from mobiledet_jax.tflite import flatbuffer

SIZE = (128, 128)


def _export(name: str, fmt: str, postprocessed: bool, **kw) -> bytes:
    mc = config_lib.model_config(name)
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE[0], 0.25, 3
    model = build_model(mc)
    variables = random_weights.random_variables(model, SIZE, seed=3)
    rep = list(np.random.default_rng(1).integers(0, 256, (8, *SIZE, 3)).astype(np.uint8))
    head = "scores" if postprocessed else "logits"
    tfl = convert.convert(model, variables, SIZE, fmt, head, representative_images=rep, **kw)
    if postprocessed:
        tfl = postprocess_op.append_postprocess(tfl, anchors_lib.anchors_for_image(*SIZE), 3)
    return tfl


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    out = {
        "edgetpu_int8": _export("mobiledet_edgetpu", "int8", postprocessed=True),
        "edgetpu_float": _export("mobiledet_edgetpu", "float32", postprocessed=False),
        # the converter's own graph, with its HARD_SWISH ops (int8_hard_swish="op")
        "cpu_int8": _export("mobiledet_cpu", "int8", False, int8_hard_swish="op"),
        "cpu_int8_mul_add": _export("mobiledet_cpu", "int8", postprocessed=False),  # the default
    }
    for name, data in out.items():
        (root / f"{name}.tflite").write_bytes(data)
    return {name: (data, root / f"{name}.tflite") for name, data in out.items()}


def test_edgetpu_preset_maps_everything_but_postprocessing(files):
    data, _ = files["edgetpu_int8"]
    for target in delegate_rules.TARGETS:
        result = delegate_rules.check(data, target)
        assert result.ok, result.table()
        assert result.partitions == 1
        on_cpu = [op.name for op in result.ops if not op.mapped]
        assert on_cpu == ["DEQUANTIZE", "DEQUANTIZE", postprocess_op.OP_NAME]
        assert all(op.postprocess for op in result.ops if not op.mapped)
        assert result.ops[result.first_unsupported].name == "DEQUANTIZE"


def test_float_model_is_flagged(files):
    data, _ = files["edgetpu_float"]
    result = delegate_rules.check(data, "edgetpu")
    assert not result.ok and result.mapped == 0
    assert result.first_unsupported == 0 and result.ops[0].name == "CAST"
    reasons = {op.reason for op in result.ops if op.name == "CONV_2D"}
    assert reasons == {"unsupported data type FLOAT32"}
    assert "FAIL" in result.table()
    assert not delegate_rules.check(data, "dsp").ok


def test_unsupported_op_splits_the_edgetpu_graph(files):
    """MobileDet-CPU's HARD_SWISH is not in the Coral table but is in the Hexagon delegate's."""
    data, _ = files["cpu_int8"]
    result = delegate_rules.check(data, "edgetpu")
    assert not result.ok
    first = result.ops[result.first_unsupported]
    assert first.name == "HARD_SWISH" and first.reason == "operation not supported"
    after = result.ops[result.first_unsupported + 1 :]
    # supported ops after the split still run on the CPU, as the compiler does it
    assert any(op.name == "CONV_2D" and op.supported and not op.mapped for op in after)
    assert "HARD_SWISH" in result.table()
    assert delegate_rules.check(data, "dsp").ok


def test_hard_swish_as_mul_add_maps_on_both(files):
    """The default export writes int8 hard-swish as MUL, ADD, MUL (export/int8_kernels.py)."""
    data, _ = files["cpu_int8_mul_add"]
    for target in delegate_rules.TARGETS:
        result = delegate_rules.check(data, target)
        assert result.ok and result.partitions == 1, result.table()
        assert "HARD_SWISH" not in result.by_type() and result.by_type()["MEAN"]["mapped"] > 0


def test_dsp_rule_on_an_edited_conv(files):
    data, _ = files["edgetpu_int8"]
    model = flatbuffer.read(data)
    op = next(
        o
        for o in model.subgraphs[0].operators
        if flatbuffer.op_code_name(model, o.opcodeIndex)[0] == "CONV_2D"
    )
    op.builtinOptions.strideH = op.builtinOptions.strideW = 4
    edited = flatbuffer.write(model)
    result = delegate_rules.check(edited, "dsp")
    assert not result.ok and result.partitions == 2
    assert [op.reason for op in result.failing] == ["stride > 3"]
    assert delegate_rules.check(edited, "edgetpu").ok


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mobiledet_jax.preflight", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_exit_codes(files, tmp_path):
    ok = _cli(files["edgetpu_int8"][1], "--target=edgetpu")
    assert ok.returncode == 0, ok.stderr
    assert "OK: backbone and head fully mapped" in ok.stdout
    bad = _cli(files["cpu_int8"][1], "--target=edgetpu", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["by_type"]["HARD_SWISH"]["mapped"] == 0
    assert _cli(files["cpu_int8"][1], "--target=dsp").returncode == 0
    missing = _cli(tmp_path / "nope.tflite", "--target=dsp")
    assert missing.returncode == 2 and "preflight:" in missing.stderr
