"""``search.cost_model``: the table's entries, the gather-sum, files, fitting and accuracy."""

import csv
import dataclasses
import math
import sys

import jax
import numpy as np
import pytest

from mobiledet_jax.search import cost_model as cm
from mobiledet_jax.search import space as space_lib


def _random_table(space_name="tiny", image_size=160, seed=0) -> cm.CostModel:
    sp = space_lib.get_space(space_name)
    entries = cm.table_entries(sp, image_size)
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.01, 2.0, len(entries))
    return cm.CostModel(
        dict(zip(entries, values.tolist(), strict=True)),
        spread={e: 0.01 for e in entries},
        counts={e: 60 for e in entries},
        b0=0.3, alpha=1.1, image_size=image_size, num_classes=4, space=space_name,
        runtime="litert-xnnpack-1thread",
    )  # fmt: skip


def _specs(space_name, n, seed=1):
    sp = space_lib.get_space(space_name)
    rng = np.random.default_rng(seed)
    return [space_lib.decode(sp, space_lib.random_indices(sp, rng)) for _ in range(n)]


def test_table_entries_cover_the_space():
    sp = space_lib.get_space("tiny")
    entries = cm.table_entries(sp, 160)
    assert len(entries) == 552
    assert len(set(entries)) == len(entries)
    kinds = [e.kind for e in entries]
    assert kinds.count("stem") == 3 and kinds.count("head") == 9
    table = set(entries)
    for spec in _specs("tiny", 100):
        pieces = cm.entries_of(spec, 160)
        assert pieces[0].kind == "stem" and pieces[-1].kind == "head"
        assert all(p in table for p in pieces), [p for p in pieces if p not in table]


def test_entries_of_widths_and_slots():
    sp = space_lib.get_space("test")
    spec = _specs("test", 1)[0]
    pieces = cm.entries_of(spec, 64)
    assert [p.slot for p in pieces] == ["stem"] + [f"b{i}.l1" for i in range(1, 8)] + ["head"]
    assert pieces[0].input_hw == 64 and pieces[1].input_hw == 32 and pieces[-2].input_hw == 2
    for a, b in zip(pieces[1:-2], pieces[2:-1], strict=True):
        assert a.cout == b.cin
    head = pieces[-1]
    assert (head.cin, head.cout) == (spec.blocks[5].out, spec.blocks[7].out)
    assert all(p in set(cm.table_entries(sp, 64)) for p in pieces)


def test_gather_sum_equals_dict_sum():
    table = _random_table()
    weights = table.weights()
    specs = _specs("tiny", 20)
    idx = [table.entry_index(s) for s in specs]
    fn = jax.jit(table.predict_indices)
    for s, i in zip(specs, idx, strict=True):
        assert float(fn(weights, i)) == pytest.approx(table.predict(s), rel=1e-5)
    # a batch of equal-length architectures in one call
    same = [i for i in idx if len(i) == len(idx[0])]
    batch = np.asarray(table.predict_indices(weights, np.stack(same)))
    assert batch.shape == (len(same),)


def test_missing_entry_is_named():
    table = _random_table()
    spec = _specs("tiny", 1)[0]
    piece = cm.entries_of(spec, 160)[3]
    del table.entries[piece]
    table = dataclasses.replace(table)  # fresh index
    for call in (table.predict, table.entry_index):
        with pytest.raises(cm.MissingEntryError, match=piece.slot):
            call(spec)


def test_json_round_trip(tmp_path):
    table = _random_table("test", 64)
    table = dataclasses.replace(
        table, report={"rmse_ms": 0.1, "mape": 0.05, "within_10pct": 0.9, "kendall_tau": 0.8,
                       "n": 5, "on": "held-out"},
    )  # fmt: skip
    table.save(tmp_path / "t.json")
    back = cm.CostModel.load(tmp_path / "t.json")
    assert back == table
    assert back.keys == table.keys
    data = table.to_dict()
    data["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        cm.CostModel.from_dict(data)


def test_csv_round_trip(tmp_path):
    table = _random_table("test", 64)
    path = tmp_path / "t.csv"
    table.write_csv(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == cm.CSV_COLUMNS
        rows = list(reader)
    assert {r["slot"] for r in rows} >= {"stem", "head", "b3.l1"}
    assert {r["block"] for r in rows if r["slot"] == "b3.l1"} == {"b3"}
    back = cm.read_csv(path, num_classes=4)
    assert back.entries == table.entries
    assert back.spread == table.spread and back.counts == table.counts
    assert (back.target, back.runtime, back.dtype, back.image_size, back.host, back.date) == (
        table.target, table.runtime, table.dtype, 64, table.host, table.date)  # fmt: skip
    spec = _specs("test", 1)[0]
    assert back.predict(spec) == pytest.approx(table.table_sum(spec))  # b0 0, alpha 1


def test_csv_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("target,slot,latency\ncpu,stem,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        cm.read_csv(path)


def _synthetic(n_entries=12, n_arch=80, seed=0):
    rng = np.random.default_rng(seed)
    entries = [
        cm.Entry("layer", 8, 1, 8, 8, "ibn", 3, 4.0, slot=f"b1.l{i}") for i in range(n_entries)
    ]
    archs = [[entries[j] for j in range(n_entries) for _ in range(rng.integers(0, 3))]
             for _ in range(n_arch)]  # fmt: skip
    return entries, archs, rng


def test_ridge_recovers_synthetic_weights():
    entries, archs, rng = _synthetic()
    w = rng.uniform(0.1, 3.0, len(entries))
    y = cm.features(archs, entries) @ w
    fitted = cm.fit_from_measurements(archs, y, entries, ridge=1e-10)
    np.testing.assert_allclose(fitted, w, atol=1e-6)
    w[[2, 7]] = 0.0  # non-negative variant, with exact zeros
    y = cm.features(archs, entries) @ w
    fitted = cm.fit_from_measurements(archs, y, entries, ridge=1e-10, nonneg=True)
    assert fitted.min() >= 0
    np.testing.assert_allclose(fitted, w, atol=1e-6)
    # noisy, fewer architectures than entries: the ridge keeps it finite, shrinks to the prior
    few = cm.fit_from_measurements(archs[:5], y[:5] + 0.01, entries, ridge=1.0, prior=w)
    assert np.all(np.isfinite(few)) and np.abs(few - w).max() < 0.1


def test_calibrate_recovers_line():
    table = _random_table()
    specs = _specs("tiny", 8)
    sums = np.array([table.table_sum(s) for s in specs])
    fitted = cm.calibrate(table, specs, 0.7 + 1.3 * sums)
    assert fitted.b0 == pytest.approx(0.7) and fitted.alpha == pytest.approx(1.3)
    assert fitted.calibration["n"] == 8 and fitted.calibration["rmse_ms"] < 1e-9


def test_accuracy_hand_case(monkeypatch):
    r = cm.accuracy([10, 20, 30], [10, 22, 27], on="hand")
    assert r["rmse_ms"] == pytest.approx(math.sqrt((0 + 4 + 9) / 3))
    assert r["mape"] == pytest.approx((0 + 2 / 22 + 3 / 27) / 3)
    assert r["within_10pct"] == pytest.approx(2 / 3)
    assert r["kendall_tau"] == pytest.approx(1.0)
    assert r["n"] == 3 and r["on"] == "hand"
    # one discordant pair of three: tau = (2 - 1) / 3
    assert cm.accuracy([1, 2, 3], [1, 3, 2])["kendall_tau"] == pytest.approx(1 / 3)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the fallback count
    assert cm.accuracy([1, 2, 3], [1, 3, 2])["kendall_tau"] == pytest.approx(1 / 3)
    assert "within" in cm.format_report(r)


def test_require_report():
    table = _random_table()
    with pytest.raises(cm.NoReportError, match="no accuracy report"):
        cm.require_report(table)
    report = cm.accuracy([1.0, 2.0], [1.0, 2.1], on="x")
    assert cm.require_report(dataclasses.replace(table, report=report)) == report
