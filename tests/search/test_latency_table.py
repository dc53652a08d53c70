"""``search.latency_builder`` and ``python -m mobiledet_jax.latency_table``: real pieces built and
timed with LiteRT, emitted int8 networks, fits from (synthetic) device timings, the command."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax.search import cost_model as cm
from mobiledet_jax.search import latency_builder as lb
from mobiledet_jax.search import space as space_lib
from mobiledet_jax.tflite import flatbuffer

PIECES = [
    cm.Entry("layer", 8, 1, 16, 16, "ibn", 3, 4.0, slot="b3.l2", residual=True),
    cm.Entry("layer", 8, 2, 8, 16, "fused", 5, 8.0, se=True, activation="hard_swish",
             slot="b3.l1"),
    cm.Entry("layer", 8, 1, 16, 16, "tucker", 3, r_in=0.25, r_out=0.75, slot="b3.l2",
             residual=True),
    cm.head_entry(64, 24, 48),
]  # fmt: skip


def _cli(*flags, timeout=900):
    cmd = [sys.executable, "-m", "mobiledet_jax.latency_table", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_pieces_build_and_time():
    expected_ops = [
        {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "ADD": 1},
        {"CONV_2D": 4, "HARD_SWISH": 2, "AVERAGE_POOL_2D": 1, "LOGISTIC": 1, "MUL": 1},
        {"CONV_2D": 3, "ADD": 1},
        None,
    ]
    for entry, ops in zip(PIECES, expected_ops, strict=True):
        data = lb.entry_tflite(entry, num_classes=2)
        if ops is not None:
            assert flatbuffer.op_counts(data) == ops, entry.describe()
        ms, spread = lb.time_tflite(data, warmup=2, rounds=2, invokes=5)
        assert math.isfinite(ms) and ms > 0 and spread >= 0, entry.describe()
    head = flatbuffer.op_counts(lb.entry_tflite(PIECES[-1], num_classes=2))
    assert head["CONV_2D"] == 8 + 12 and head["DEPTHWISE_CONV_2D"] == 4 + 12  # neck + 6 maps


def test_build_table_resumes(tmp_path, monkeypatch):
    sp = space_lib.get_space("test")
    cache = str(tmp_path / "t.json.partial")
    kw = dict(progress=False, cache=cache, warmup=1, rounds=1, invokes=3)
    first = lb.build_table(sp, 64, 2, entries=PIECES[:2], **kw)
    assert set(first.entries) == set(PIECES[:2]) and all(v > 0 for v in first.entries.values())

    def no_timing(*a, **k):
        raise AssertionError("a cached entry was timed again")

    monkeypatch.setattr(lb, "time_tflite", no_timing)
    again = lb.build_table(sp, 64, 2, entries=PIECES[:2], **kw)
    assert again.entries == first.entries
    with pytest.raises(ValueError, match="other settings"):
        lb.build_table(sp, 64, 3, entries=PIECES[:2], **kw)
    # interrupted on the third entry: the partial file still holds the two finished ones
    with pytest.raises(AssertionError, match="timed again"):
        lb.build_table(sp, 64, 2, entries=PIECES[:3], **kw)
    assert len(json.loads(open(cache).read())["entries"]) == 2


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("emitted")
    sp = space_lib.get_space("test")
    files = lb.emit_random(sp, 2, str(out), 64, num_classes=2, fmt="int8", seed=3, progress=False)
    return sp, out, files


def test_emit_random_writes_int8_files(emitted):
    from ai_edge_litert import interpreter as litert

    sp, out, files = emitted
    assert files == ["arch_000.tflite", "arch_001.tflite"]
    for name in files:
        interp = litert.Interpreter(model_path=str(out / name))
        interp.allocate_tensors()
        (inp,) = interp.get_input_details()
        assert inp["dtype"] == np.uint8 and tuple(inp["shape"]) == (1, 64, 64, 3)
        interp.set_tensor(inp["index"], np.zeros((1, 64, 64, 3), np.uint8))
        interp.invoke()
    meta = json.loads((out / "architectures.json").read_text())
    assert [a["file"] for a in meta["architectures"]] == files
    for a in meta["architectures"]:
        from mobiledet_jax.models import specs

        assert specs.spec_from_dict(a["spec"]) == space_lib.decode(sp, a["indices"])
    with open(out / "measured.csv", newline="") as f:
        assert [r["file"] for r in csv.DictReader(f)] == files
    assert "benchmark_model" in (out / lb.HOW_TO).read_text()
    assert (out / "architectures.csv").read_text().startswith("file,indices,spec")


def test_fit_table_from_synthetic_timings(emitted, tmp_path):
    sp, out, files = emitted
    meta = json.loads((out / "architectures.json").read_text())
    entries = cm.table_entries(sp, 64)
    truth = {e: 0.01 * (1 + i % 7) for i, e in enumerate(entries)}
    from mobiledet_jax.models import specs

    ms = [sum(truth[e] for e in cm.entries_of(specs.spec_from_dict(a["spec"]), 64))
          for a in meta["architectures"]]  # fmt: skip
    measured = tmp_path / "measured.csv"
    measured.write_text(
        "file,latency_ms\n" + "".join(f"{f},{m}\n" for f, m in zip(files, ms, strict=True))
    )
    table = lb.fit_table(sp, str(out), str(measured), ridge=1e-6, folds=2)
    assert table.report["n"] == 2 and "cross-validation" in table.report["on"]
    assert table.dtype == "int8" and table.image_size == 64 and table.num_classes == 2
    for a, m in zip(meta["architectures"], ms, strict=True):  # fitted on all: the sums match
        assert table.predict(specs.spec_from_dict(a["spec"])) == pytest.approx(m, rel=1e-3)
    # a per-entry CSV of the truth, calibrated and reported on the same timings
    entries_csv = tmp_path / "entries.csv"
    cm.CostModel(truth, target="edgetpu", image_size=64).write_csv(entries_csv)
    imported = lb.import_entries(str(entries_csv), 2, str(out), str(measured), folds=2)
    assert imported.target == "edgetpu" and imported.report["rmse_ms"] < 1e-6
    # the command: --fit writes a reported table, a device target without timings is refused
    r = _cli("--target=edgetpu", "--space=test", f"--fit={measured}", f"--emitted_dir={out}",
             f"--output={tmp_path / 'fit.json'}", "--folds=2", "--ridge=1e-6")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Kendall tau" in r.stdout
    fitted = cm.CostModel.load(tmp_path / "fit.json")
    assert fitted.target == "edgetpu" and cm.require_report(fitted)["n"] == 2
    r = _cli("--target=dsp", "--space=test", f"--output={tmp_path / 'x.json'}")
    assert r.returncode == 2 and "--emit_random" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_builds_a_calibrated_table(tmp_path):
    """The whole CPU path on the "test" space at 64 px: 378 entries, 3 + 3 networks."""
    output = tmp_path / "test_cpu_64.json"
    r = _cli("--target=cpu", "--space=test", "--image_size=64", "--num_classes=4",
             f"--output={output}", "--calibration=3", "--holdout=3", "--rounds=2",
             "--invokes=10", f"--json={tmp_path / 'report.json'}")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "accuracy: RMSE" in r.stdout and "Kendall tau" in r.stdout
    table = cm.CostModel.load(output)
    report = cm.require_report(table)
    assert report["n"] == 3 and "held-out" in report["on"]
    assert len(table.entries) == 378 and all(v > 0 for v in table.entries.values())
    assert table.calibration["n"] == 3 and table.alpha > 0
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert cm.read_csv(output.with_suffix(".csv")).entries == table.entries
    assert not (tmp_path / "test_cpu_64.json.partial").exists()
    spec = space_lib.decode(space_lib.get_space("test"), np.zeros(61, np.int64))
    assert table.predict(spec) > 0


def test_calibration_architectures_span_the_latency_range():
    sp = space_lib.get_space("tiny")
    entries = cm.table_entries(sp, 160)
    values = np.random.default_rng(0).uniform(0.01, 2.0, len(entries))
    table = cm.CostModel(dict(zip(entries, values.tolist(), strict=True)), image_size=160,
                         space="tiny")  # fmt: skip
    price = lambda archs: np.array([table.table_sum(space_lib.decode(sp, i)) for i in archs])
    pool = price(lb.random_architectures(sp, 2000, np.random.default_rng(1)))
    uniform = price(lb.random_architectures(sp, 20, np.random.default_rng(2)))
    spread_idx = lb.spread_architectures(sp, 20, np.random.default_rng(2), table, pool=2000)
    spread = price(spread_idx)
    # evenly spaced in log price: reaches both tails the uniform draws leave out
    assert spread.min() < np.quantile(pool, 0.01) and spread.max() > np.quantile(pool, 0.99)
    assert spread.min() < uniform.min() and spread.max() > uniform.max()
    gaps = np.diff(np.log(np.sort(spread)))
    assert gaps.max() < 3 * np.log(spread.max() / spread.min()) / 19
    # distinct, and none of an excluded set
    held = lb.spread_architectures(sp, 10, np.random.default_rng(3), table, exclude=spread_idx)
    tables = {tuple(space_lib.decode(sp, i).blocks) for i in spread_idx}
    assert len(tables) == 20 and not tables & {tuple(space_lib.decode(sp, i).blocks) for i in held}
