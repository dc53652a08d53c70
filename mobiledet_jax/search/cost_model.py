"""The table-based latency model of the search, as data: ``c(a) = b0 + alpha * sum_e T[e]``.

An architecture's latency is predicted as the sum of the timed pieces it is made of (the stem,
every searched layer, and the SSDLite neck + box predictors as one ``head`` piece), corrected by a
line fitted to whole networks measured on the same target (``calibrate``). Skipped layers cost 0.
A piece is an ``Entry``: a (slot, op, widths, input size) cell, as TuNAS' per-slot cost tables
(two slots that compute the same thing, e.g. b4.l2 and b5.l2 of "tiny", are two entries, timed
apart). ``latency_builder`` times the entries on this CPU; for devices we cannot reach the
per-entry weights are fitted from whole-network timings the user takes (``fit_from_measurements``,
ridge regression on entry counts) or imported as a per-entry CSV (``read_csv``, same columns as
``write_csv``).

``predict(spec)`` walks the table with a dict; ``entry_index(spec)`` + ``predict_indices`` is the
same sum as one gather (``jnp.take(...).sum()``, jit-able) for the search. A model without an
accuracy ``report`` (RMSE, MAPE, fraction within +-10% as nn-Meter reports it, Kendall tau on
held-out architectures) is refused by the search (``require_report``).

Written here rather than with a library: nn-Meter (the closest tool) is not pip-installable for
TFLite/XNNPACK and predicts per-kernel from its own op detection; this model's pieces are exactly
the blocks of ``models.specs`` at the widths of ``models.resolve_blocks``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import math
import platform
from collections.abc import Sequence

import numpy as np

from mobiledet_jax import atomic_files
from mobiledet_jax.models import specs
from mobiledet_jax.models.backbone import endpoint_widths, resolve_blocks
from mobiledet_jax.search import space as space_lib

SCHEMA = "mobiledet_jax.latency_table"
SCHEMA_VERSION = 1
KINDS = ("stem", "layer", "head")
HEAD_BLOCK = "ssdlite"  # Entry.block of the head piece (neck + box predictors)
CSV_COLUMNS = (
    "target", "runtime", "dtype", "input_hw", "slot", "block", "stride", "cin", "cout", "family",
    "kernel", "expansion", "r_in", "r_out", "se", "activation", "latency_ms", "spread", "n",
    "host", "date",
)  # fmt: skip
WITHIN = 0.10  # the accuracy report's "within +-10%" (nn-Meter's metric)


class MissingEntryError(LookupError):
    """An architecture needs a piece the table does not have."""


class NoReportError(ValueError):
    """A cost model without an accuracy report (the search refuses it)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One timed piece. ``stem``: the first conv (cin 3, input_hw = the image size). ``layer``: one
    searched block at ``slot`` ("b3.l2"). ``head``: the SSDLite neck + box predictors, with
    ``cin`` = the C4 width, ``cout`` = the C5 width, ``input_hw`` = the image size."""

    kind: str
    input_hw: int
    stride: int
    cin: int
    cout: int
    block: str  # specs.BLOCK_TYPES, or HEAD_BLOCK
    kernel: int
    expansion: float = 1.0
    r_in: float = 0.0
    r_out: float = 0.0
    se: bool = False
    activation: str = "relu6"
    slot: str = ""  # "stem", "b3.l2", "head"
    residual: bool = False  # layers 2.. of a block (the space's rule)

    def describe(self) -> str:
        """``b3.l2 ibn k3 e4 24->24 @20 s1``."""
        if self.kind == "head":
            return f"head C4 {self.cin} C5 {self.cout} @{self.input_hw}"
        op = f"{self.block} k{self.kernel}"
        if self.block in (specs.IBN, specs.FUSED):
            op += f" e{self.expansion:g}"
        elif self.block == specs.TUCKER:
            op += f" r{self.r_in:g}/{self.r_out:g}"
        op += " se" if self.se else ""
        return f"{self.slot} {op} {self.cin}->{self.cout} @{self.input_hw} s{self.stride}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Entry:
        return cls(**data)


def _layer_entry(slot: str, hw: int, cin: int, cout: int, row: specs.BlockSpec, act: str) -> Entry:
    """The one place a table row becomes an Entry (``entries_of`` and ``table_entries`` agree)."""
    mixed = row.block in (specs.IBN, specs.FUSED)
    tucker = row.block == specs.TUCKER
    return Entry(
        "layer", hw, row.stride, cin, cout, row.block, row.kernel,
        expansion=float(row.expansion) if mixed else 1.0,
        r_in=float(row.in_ratio) if tucker else 0.0,
        r_out=float(row.out_ratio) if tucker else 0.0,
        se=bool(row.se), activation=act, slot=slot, residual=bool(row.residual),
    )  # fmt: skip


def stem_entry(image_size: int, stride: int, width: int, kernel: int, activation: str) -> Entry:
    return Entry("stem", image_size, stride, 3, width, specs.CONV, kernel,
                 activation=activation, slot="stem")  # fmt: skip


def head_entry(image_size: int, c4: int, c5: int) -> Entry:
    return Entry("head", image_size, 1, c4, c5, HEAD_BLOCK, 3, slot="head")


def entries_of(spec: specs.BackboneSpec, image_size: int) -> list[Entry]:
    """The pieces of an architecture: the stem (row 0), one entry per layer, one head entry.

    Slots are named as the space's skeleton names them: a new block ``b1``, ``b2``, ... at every
    non-residual row, layers ``l1``, ``l2``, ... inside it (decoded skipped layers are gone)."""
    rows = resolve_blocks(spec)
    if not rows or rows[0].spec.block != specs.CONV:
        raise ValueError("a cost-model architecture starts with the stem conv")
    stem = rows[0]
    out = [stem_entry(image_size, stem.spec.stride, stem.out, stem.spec.kernel, stem.activation)]
    hw = space_lib.spatial_after(image_size, stem.spec.stride)
    block, layer = 0, 0
    for b in rows[1:]:
        if b.spec.block == specs.CONV:
            raise ValueError(f"{b.name}: only the stem may be a plain conv in a cost model")
        if b.spec.residual and block > 0:
            layer += 1
        else:
            block, layer = block + 1, 1
        out.append(_layer_entry(f"b{block}.l{layer}", hw, b.cin, b.out, b.spec, b.activation))
        hw = space_lib.spatial_after(hw, b.spec.stride)
    widths = endpoint_widths(spec)
    c4, c5 = (widths[name] for name in spec.ssd_sources)
    out.append(head_entry(image_size, c4, c5))
    return out


def table_entries(space: space_lib.SearchSpace, image_size: int) -> list[Entry]:
    """Every entry an architecture of ``space`` can meet at ``image_size`` (no duplicates)."""
    stem = space.skeleton[0]
    out = [stem_entry(image_size, stem.stride, w, 3, space.activation) for w in space.widths(stem)]
    for slot in space_lib.slots(space, image_size):
        for cin, cout in slot.widths():
            for t in slot.templates:
                row = dataclasses.replace(t, out=cout)
                out.append(_layer_entry(slot.name, slot.input_hw, cin, cout, row, space.activation))
    src = specs.BackboneSpec("", "relu6", ()).ssd_sources
    by_end = {b.endpoint: space.widths(b) for b in space.skeleton if b.endpoint}
    out += [head_entry(image_size, c4, c5) for c4 in by_end[src[0]] for c5 in by_end[src[1]]]
    return list(dict.fromkeys(out))


@dataclasses.dataclass
class CostModel:
    """Per-entry milliseconds plus the calibration line; see the module docstring.

    ``entries`` is treated as read-only once built (its order is the weight vector's order).
    ``spread``: the range of the round medians of each entry's timing; ``counts``: timings (or,
    for a fitted table, measured architectures) behind each value."""

    entries: dict[Entry, float]
    spread: dict[Entry, float] = dataclasses.field(default_factory=dict)
    counts: dict[Entry, int] = dataclasses.field(default_factory=dict)
    b0: float = 0.0
    alpha: float = 1.0
    target: str = "cpu"
    runtime: str = ""
    dtype: str = "float32"
    image_size: int = 320
    num_classes: int | None = None
    host: str = dataclasses.field(default_factory=platform.node)
    date: str = dataclasses.field(default_factory=lambda: datetime.date.today().isoformat())
    space: str = ""
    report: dict | None = None
    calibration: dict | None = None  # how b0 and alpha were fitted

    @functools.cached_property
    def keys(self) -> tuple[Entry, ...]:
        return tuple(self.entries)

    @functools.cached_property
    def _position(self) -> dict[Entry, int]:
        return {e: i for i, e in enumerate(self.keys)}

    @property
    def metadata(self) -> dict:
        """Where and how the table was made (target, runtime, dtype, image_size, num_classes,
        host, date, space, schema version)."""
        keys = ("target", "runtime", "dtype", "image_size", "num_classes", "host", "date", "space")
        return {**{k: getattr(self, k) for k in keys}, "version": SCHEMA_VERSION}

    def digest(self) -> str:
        """sha256 of the canonical JSON (which table a search used)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def weights(self) -> np.ndarray:
        """The per-entry ms as a vector in ``keys`` order (the gather table)."""
        return np.array([self.entries[e] for e in self.keys], np.float32)

    def _missing(self, entries: Sequence[Entry]) -> MissingEntryError:
        missing = [e for e in entries if e not in self.entries]
        return MissingEntryError(
            f"the latency table ({self.target}, {self.image_size} px, {len(self.entries)} entries) "
            f"has no entry for {missing[0].describe()} ({len(missing)} missing); {missing[0]}"
        )

    def table_sum(self, spec: specs.BackboneSpec) -> float:
        """Sum of the table values of the architecture's pieces (no b0, no alpha)."""
        entries = entries_of(spec, self.image_size)
        try:
            return float(sum(self.entries[e] for e in entries))
        except KeyError:
            raise self._missing(entries) from None

    def predict(self, spec: specs.BackboneSpec) -> float:
        """Predicted ms of an architecture: ``b0 + alpha * table_sum``."""
        return self.b0 + self.alpha * self.table_sum(spec)

    def entry_index(self, spec: specs.BackboneSpec) -> np.ndarray:
        """Positions of the architecture's pieces in ``weights()`` (int32, one per piece)."""
        entries = entries_of(spec, self.image_size)
        try:
            return np.array([self._position[e] for e in entries], np.int32)
        except KeyError:
            raise self._missing(entries) from None

    def predict_indices(self, weights, idx):
        """``b0 + alpha * weights[idx].sum(-1)`` as one gather (jit-able; ``idx`` [..., pieces])."""
        import jax.numpy as jnp

        return self.b0 + self.alpha * jnp.take(jnp.asarray(weights), jnp.asarray(idx)).sum(-1)

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        rows = [
            {**e.to_dict(), "latency_ms": float(ms), "spread": float(self.spread.get(e, 0.0)),
             "n": int(self.counts.get(e, 0))}
            for e, ms in self.entries.items()
        ]  # fmt: skip
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("entries", "spread", "counts"):
            meta.pop(k)
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **meta, "entries": rows}

    @classmethod
    def from_dict(cls, data: dict) -> CostModel:
        data = dict(data)
        if data.pop("schema", None) != SCHEMA:
            raise ValueError("not a latency table (no 'schema': 'mobiledet_jax.latency_table')")
        version = data.pop("version", None)
        if version != SCHEMA_VERSION:
            raise ValueError(f"latency table version {version}, this code reads {SCHEMA_VERSION}")
        entries, spread, counts = {}, {}, {}
        for row in data.pop("entries"):
            row = dict(row)
            ms, s, n = row.pop("latency_ms"), row.pop("spread", 0.0), row.pop("n", 0)
            e = Entry.from_dict(row)
            entries[e], spread[e], counts[e] = float(ms), float(s), int(n)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown latency table fields {sorted(unknown)}")
        return cls(entries=entries, spread=spread, counts=counts, **data)

    def save(self, path) -> None:
        """The JSON file (atomically replaced)."""
        atomic_files.write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path) -> CostModel:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for e, ms in self.entries.items():
            w.writerow({
                "target": self.target, "runtime": self.runtime, "dtype": self.dtype,
                "input_hw": e.input_hw, "slot": e.slot, "block": e.slot.split(".")[0],
                "stride": e.stride, "cin": e.cin, "cout": e.cout, "family": e.block,
                "kernel": e.kernel, "expansion": f"{e.expansion:g}", "r_in": f"{e.r_in:g}",
                "r_out": f"{e.r_out:g}", "se": int(e.se), "activation": e.activation,
                "latency_ms": repr(float(ms)), "spread": repr(float(self.spread.get(e, 0.0))),
                "n": int(self.counts.get(e, 0)), "host": self.host, "date": self.date,
            })  # fmt: skip
        return buf.getvalue()

    def write_csv(self, path) -> None:
        """The per-entry CSV (``CSV_COLUMNS``); ``read_csv`` reads it back."""
        atomic_files.write_text(path, self.csv_text())


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes"):
        return True
    if t in ("0", "false", "no", ""):
        return False
    raise ValueError(f"se: expected 0/1, got {text!r}")


def read_csv(path, num_classes: int | None = None) -> CostModel:
    """A per-entry table in the ``CSV_COLUMNS`` schema (ours, or a user's for EdgeTPU/DSP/GPU).

    ``slot`` "stem" / "head" gives the kind (head: cin = C4, cout = C5, input_hw = image size);
    layers 2.. of a block (``b3.l2``) are the residual ones. b0 = 0, alpha = 1, no report."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (expected {list(CSV_COLUMNS)})")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no entries")
    meta = {}
    for key in ("target", "runtime", "dtype", "host", "date"):
        values = {r[key] for r in rows}
        if len(values) > 1 and key in ("target", "runtime", "dtype"):
            raise ValueError(f"{path}: one table, one {key}; found {sorted(values)}")
        meta[key] = rows[0][key]
    entries, spread, counts = {}, {}, {}
    for i, r in enumerate(rows, start=2):
        try:
            slot = r["slot"]
            kind = slot if slot in ("stem", "head") else "layer"
            layer = int(slot.split(".l")[-1]) if kind == "layer" else 0
            e = Entry(
                kind, int(r["input_hw"]), int(r["stride"]), int(r["cin"]), int(r["cout"]),
                r["family"], int(r["kernel"]), float(r["expansion"] or 1.0),
                float(r["r_in"] or 0.0), float(r["r_out"] or 0.0), _bool(r["se"]),
                r["activation"], slot, layer > 1,
            )  # fmt: skip
            entries[e] = float(r["latency_ms"])
            spread[e] = float(r["spread"] or 0.0)
            counts[e] = int(r["n"] or 0)
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}:{i}: {err}") from None
    sizes = {e.input_hw for e in entries if e.kind in ("stem", "head")}
    if len(sizes) != 1:
        raise ValueError(f"{path}: stem/head rows give image sizes {sorted(sizes)}, expected one")
    return CostModel(entries, spread, counts, image_size=sizes.pop(), num_classes=num_classes,
                     **meta)  # fmt: skip


# -- fitting ----------------------------------------------------------------------------------
def features(architectures: Sequence[Sequence[Entry]], entries: Sequence[Entry]) -> np.ndarray:
    """Entry counts per architecture ``[n_arch, n_entries]`` (TuNAS' coupled one-hot features)."""
    pos = {e: i for i, e in enumerate(entries)}
    x = np.zeros((len(architectures), len(entries)), np.float64)
    for a, arch in enumerate(architectures):
        for e in arch:
            if e not in pos:
                raise MissingEntryError(f"architecture {a} has {e.describe()}, not in the entries")
            x[a, pos[e]] += 1
    return x


def calibrate(model: CostModel, specs: Sequence[specs.BackboneSpec], measured_ms) -> CostModel:
    """``model`` with b0 and alpha fitted by least squares of ``measured ~ b0 + alpha * sum``."""
    x = np.array([model.table_sum(s) for s in specs], np.float64)
    y = np.asarray(measured_ms, np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"{x.size} architectures but {y.size} measurements")
    if x.size == 1:  # a ratio only
        b0, alpha = 0.0, float(y[0] / x[0])
    else:
        (b0, alpha), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), y, rcond=None)
    fit = b0 + alpha * x
    info = {"n": int(x.size), "rmse_ms": float(np.sqrt(np.mean((fit - y) ** 2)))}
    return dataclasses.replace(model, b0=float(b0), alpha=float(alpha), calibration=info)


def fit_from_measurements(
    architectures: Sequence[Sequence[Entry]],
    measured_ms,
    entries: Sequence[Entry],
    ridge: float = 1e-3,
    nonneg: bool = False,
    prior=None,
) -> np.ndarray:
    """Per-entry ms from whole-network timings: ``argmin |X w - y|^2 + ridge |w - prior|^2``
    (``w >= 0`` with ``nonneg``), X = ``features``. ``prior``: per-entry values to shrink toward
    (e.g. another target's table scaled); default 0. Entries no architecture contains keep their
    prior value."""
    x = features(architectures, entries)
    y = np.asarray(measured_ms, np.float64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"{x.shape[0]} architectures but {y.size} measurements")
    p = np.zeros(x.shape[1]) if prior is None else np.asarray(prior, np.float64)
    r = math.sqrt(max(ridge, 0.0))
    a = np.concatenate([x, r * np.eye(x.shape[1])])
    b = np.concatenate([y, r * p])
    if not nonneg:
        return np.linalg.lstsq(a, b, rcond=None)[0]
    try:
        from scipy.optimize import nnls
    except ImportError:  # projected gradient on the same system
        w = np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0, None)
        step = 1.0 / max(np.linalg.norm(a, 2) ** 2, 1e-12)
        for _ in range(20000):
            w = np.clip(w - step * (a.T @ (a @ w - b)), 0, None)
        return w
    return nnls(a, b, maxiter=50 * a.shape[1])[0]


def _kendall_tau(p: np.ndarray, m: np.ndarray) -> float:
    try:
        from scipy.stats import kendalltau
    except ImportError:
        s = 0
        for i in range(len(p)):
            s += int(np.sum(np.sign(p[i] - p[i + 1 :]) * np.sign(m[i] - m[i + 1 :])))
        return 2.0 * s / (len(p) * (len(p) - 1))
    return float(kendalltau(p, m).statistic)


def accuracy(predicted, measured, on: str = "") -> dict:
    """RMSE (ms), MAPE (a fraction), fraction within +-10% of the measurement, Kendall tau."""
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if p.shape != m.shape or p.size == 0:
        raise ValueError(f"{p.size} predictions for {m.size} measurements")
    rel = np.abs(p - m) / np.abs(m)
    tau = _kendall_tau(p, m) if p.size > 1 else float("nan")
    return {
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
        "mape": float(np.mean(rel)),
        "within_10pct": float(np.mean(rel <= WITHIN + 1e-12)),
        "kendall_tau": None if math.isnan(tau) else tau,
        "n": int(p.size),
        "on": on,
    }


def format_report(report: dict) -> str:
    tau = report.get("kendall_tau")
    return (
        f"RMSE {report['rmse_ms']:.3f} ms, MAPE {100 * report['mape']:.1f}%, "
        f"{100 * report['within_10pct']:.0f}% within +-10%, Kendall tau "
        f"{'n/a' if tau is None else f'{tau:.3f}'} (n={report['n']}; {report.get('on', '')})"
    )


def require_report(model: CostModel) -> dict:
    """The model's accuracy report; NoReportError when it has none."""
    if not model.report:
        raise NoReportError(
            f"the {model.target} latency table ({model.space or 'no space'}, {model.image_size} px) "
            "has no accuracy report; calibrate it on measured networks first "
            "(python -m mobiledet_jax.latency_table, or --fit with device timings)"
        )
    return model.report
