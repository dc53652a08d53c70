"""Building latency tables: CPU micro-benchmarks of every entry, whole-network measurements for the
calibration and the accuracy report, and random architectures for devices this machine cannot reach.

- ``entry_tflite``: one ``cost_model.Entry`` as a float32 .tflite at its exact input shape, built
  from the project's own modules (a one-row ``Backbone`` applied to ``[1, hw, hw, cin]``: the same
  ``resolve_blocks`` widths, ``InvertedBottleneck`` / ``Tucker`` / ``ConvBN`` code; the head is
  ``SSDLiteNeck`` + ``SSDLiteHead`` on C4 and C5), random weights, BN folded, depthwise as convs.
- ``time_tflite``: the LiteRT interpreter (XNNPACK, one thread) timed with the calling thread's CPU
  time (``time.thread_time``), so that other jobs on a busy machine do not count; the median of
  ``rounds`` round medians of ``invokes`` invokes, after ``warmup``.
- ``build_table`` times every ``table_entries`` entry, resuming from a partial JSON beside the
  output; ``build_calibrated_table`` then measures random whole networks (``network_tflite``: the
  export path of ``export.convert``), fits b0 and alpha and reports the accuracy on others; both
  sets spread over the space's latency range (``spread_architectures``).
- ``emit_random`` writes ready-to-run int8 files for a device, ``fit_table`` fits per-entry weights
  from the user's ``benchmark_model`` timings; ``import_entries`` reads a per-entry CSV.

Pieces go through jax2tf and ``TFLiteConverter.from_concrete_functions`` here rather than
``export.convert.convert``: that one takes a whole detector (it applies the pixel preprocessing and
names the two detector outputs); the converter settings are its ``run_converter``. Without a
``trackable_obj`` the converter takes its older graph path, twice as fast for these small pieces
and giving the same ops.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence

import numpy as np

from mobiledet_jax import atomic_files
from mobiledet_jax.progress import Progress
from mobiledet_jax.search import cost_model
from mobiledet_jax.search import space as space_lib

DEFAULT_WARMUP, DEFAULT_ROUNDS, DEFAULT_INVOKES = 5, 5, 20
DEFAULT_CALIBRATION, DEFAULT_HOLDOUT = 30, 50
DEFAULT_POOL = 5000  # uniform draws the calibration and held-out sets are spread from
DEFAULT_RIDGE, DEFAULT_FOLDS = 1e-3, 5
DEFAULT_NUM_CLASSES, DEFAULT_REPRESENTATIVE = 4, 8
RUNTIME = "litert-xnnpack-1thread"
PARTIAL_SCHEMA = cost_model.SCHEMA + ".partial"
HOW_TO = "HOW_TO_MEASURE.txt"
SAVE_SECONDS = 5.0  # the partial file is rewritten at most this often (and on any exit)


@contextlib.contextmanager
def _quiet_stderr():
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2 per interpreter."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def time_tflite(
    model_bytes: bytes,
    warmup: int = DEFAULT_WARMUP,
    rounds: int = DEFAULT_ROUNDS,
    invokes: int = DEFAULT_INVOKES,
    seed: int = 0,
) -> tuple[float, float]:
    """(the lowest round median, the rounds' max - min), ms of this thread's CPU time per invoke.

    The lowest, not the middle, round: other processes on the machine only ever add time (a
    context switch evicts the caches, and the thread's CPU time then includes refilling them), so
    the least disturbed round is the best estimate of the piece's own cost. Measured on the 2-core
    host at load 2-4: the median of 3 rounds re-timed the entries of one architecture 40% apart."""
    from mobiledet_jax.tflite import runtime

    with _quiet_stderr():
        interp = runtime._interpreter(model_bytes, num_threads=1, xnnpack=True)
        interp.allocate_tensors()
    rng = np.random.default_rng(seed)
    for d in interp.get_input_details():
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            x = rng.integers(max(info.min, -128), min(info.max, 255) + 1, d["shape"])
        else:
            x = rng.normal(size=d["shape"])
        interp.set_tensor(d["index"], x.astype(d["dtype"]))
    for _ in range(warmup):
        interp.invoke()
    medians = []
    for _ in range(max(rounds, 1)):
        times = []
        for _ in range(max(invokes, 1)):
            t = time.thread_time()
            interp.invoke()
            times.append(time.thread_time() - t)
        medians.append(statistics.median(times))
    return 1000.0 * min(medians), 1000.0 * (max(medians) - min(medians))


def _random_variables(module, inputs: Sequence[np.ndarray], seed: int) -> dict:
    """``models.random_weights``' values (LeCun normal kernels, non-trivial BN) for any module."""
    import jax

    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        shape, name = leaf.shape, getattr(path[-1], "key", str(path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1])) if shape[2] != 1 else shape[0] * shape[1]
            v = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif name == "scale":
            v = 1.0 + 0.1 * rng.normal(size=shape)
        elif name == "var":
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = 0.1 * rng.normal(size=shape)
        return v.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def _piece(entry: cost_model.Entry, num_classes: int):
    """(Flax module, its input shapes, output function) of one entry."""
    import flax.linen as nn
    import jax.numpy as jnp

    from mobiledet_jax.detection.anchors import anchors_per_location, feature_map_sizes
    from mobiledet_jax.models import specs
    from mobiledet_jax.models.backbone import Backbone
    from mobiledet_jax.models.ssdlite import SSDLiteHead, SSDLiteNeck

    if entry.kind == "head":
        (h4, w4), (h5, w5) = feature_map_sizes(entry.input_hw, entry.input_hw)[:2]

        class Head(nn.Module):
            @nn.compact
            def __call__(self, c4, c5):
                extra = SSDLiteNeck("C5", 1.0, jnp.float32, "conv", name="neck")(c5)
                per_location = anchors_per_location()
                return SSDLiteHead(num_classes, per_location, jnp.float32, "conv", name="head")(
                    [c4, c5, *extra]
                )

        return Head(), [(1, h4, w4, entry.cin), (1, h5, w5, entry.cout)], lambda out: out
    row = specs.BlockSpec(
        entry.block, entry.kernel, entry.stride, entry.cout,
        expansion=entry.expansion, in_ratio=entry.r_in, out_ratio=entry.r_out,
        residual=entry.residual, se=entry.se, endpoint="out",
    )  # fmt: skip
    spec = specs.BackboneSpec(
        "Piece", entry.activation, (row,), se_activation=entry.activation if entry.se else "relu6"
    )
    shape = (1, entry.input_hw, entry.input_hw, entry.cin)
    return Backbone(spec, conv_form="conv"), [shape], lambda out: out["out"]


def _fn_tflite(fn, input_shapes, fmt: str = "float32", representative=None) -> bytes:
    """jax2tf + ``from_concrete_functions`` + ``convert.run_converter`` for float32 inputs."""
    from jax.experimental import jax2tf

    from mobiledet_jax.export import convert

    tf = convert._tf()
    tf_fn = jax2tf.convert(fn, with_gradient=False)
    signature = [tf.TensorSpec(s, tf.float32) for s in input_shapes]

    @tf.function(autograph=False, input_signature=signature)
    def serve(*xs):
        return tf_fn(*xs)

    absl_logger = logging.getLogger("absl")  # "consider providing the trackable_obj": on purpose
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
        with _quiet_stderr():  # two C++ "Ignored output_format" lines per conversion
            return convert.run_converter(conv, fmt, representative)
    finally:
        absl_logger.setLevel(level)


def entry_tflite(entry: cost_model.Entry, num_classes: int = DEFAULT_NUM_CLASSES, seed: int = 0):
    """The float32 .tflite of one entry, input(s) ``[1, input_hw, input_hw, cin]`` (head: C4, C5)."""
    module, shapes, output = _piece(entry, num_classes)
    variables = _random_variables(module, [np.zeros(s, np.float32) for s in shapes], seed)
    return _fn_tflite(lambda *xs: output(module.apply(variables, *xs)), shapes)


def network_tflite(
    spec,
    image_size: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    fmt: str = "float32",
    seed: int = 0,
    representative: int = DEFAULT_REPRESENTATIVE,
) -> bytes:
    """The whole SSDLite of an architecture (uint8 pixels in, raw logits out, no post-processing)
    through ``export.convert.convert``; int8: full-integer PTQ on random representative images."""
    from mobiledet_jax.export import convert
    from mobiledet_jax.models import SSDLite, random_weights

    model = SSDLite(backbone_spec=spec, num_classes=num_classes)
    size = (image_size, image_size)
    variables = random_weights.random_variables(model, size, seed=seed)
    images = None
    if fmt == "int8":
        rng = np.random.default_rng(seed)
        images = list(rng.integers(0, 256, (representative, *size, 3)).astype(np.uint8))
    with _quiet_stderr():  # the converter's C++ notices (errors raise ConversionError)
        return convert.convert(model, variables, size, fmt, "logits", images)


def measure_networks(
    specs,
    image_size: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    warmup: int = DEFAULT_WARMUP,
    rounds: int = DEFAULT_ROUNDS,
    invokes: int = DEFAULT_INVOKES,
    seed: int = 0,
    progress: bool = True,
    label: str = "networks",
    cache: _Partial | None = None,
) -> np.ndarray:
    """Float32 whole-network ms of each spec (``network_tflite`` + ``time_tflite``)."""
    from mobiledet_jax.models import specs as specs_lib

    out = []
    bar = Progress(label, len(specs), "networks", enabled=progress)
    for i, spec in enumerate(specs):
        key = specs_lib.spec_to_json(spec)
        if cache is not None and key in cache.networks:
            ms = cache.networks[key]
        else:
            data = network_tflite(spec, image_size, num_classes, "float32", seed + i)
            ms = time_tflite(data, warmup, rounds, invokes, seed)[0]
            if cache is not None:
                cache.networks[key] = ms
                cache.save()
        out.append(ms)
        bar.update(i + 1, f"{ms:.3f} ms")
    bar.close()
    return np.array(out)


@dataclasses.dataclass
class _Partial:
    """The resumable state of a build: finished entries and networks, for one set of settings."""

    path: str | None
    key: dict
    entries: dict = dataclasses.field(default_factory=dict)  # Entry -> (ms, spread, n)
    networks: dict = dataclasses.field(default_factory=dict)  # spec JSON -> ms
    _saved: float = -math.inf

    @classmethod
    def open(cls, path: str | None, key: dict) -> _Partial:
        state = cls(path, key)
        if path and os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            if data.get("schema") != PARTIAL_SCHEMA or data.get("key") != key:
                raise ValueError(
                    f"{path} is a partial build with other settings ({data.get('key')}); "
                    "delete it or choose another --output"
                )
            for row in data["entries"]:
                row = dict(row)
                value = (row.pop("latency_ms"), row.pop("spread"), row.pop("n"))
                state.entries[cost_model.Entry.from_dict(row)] = value
            state.networks = dict(data.get("networks", {}))
        return state

    def save(self, every: float = 0.0) -> None:
        """Writes the file (atomically); ``every``: not again within that many seconds."""
        if not self.path or time.monotonic() - self._saved < every:
            return
        self._saved = time.monotonic()
        rows = [{**e.to_dict(), "latency_ms": ms, "spread": s, "n": n}
                for e, (ms, s, n) in self.entries.items()]  # fmt: skip
        data = {"schema": PARTIAL_SCHEMA, "key": self.key, "entries": rows,
                "networks": self.networks}  # fmt: skip
        atomic_files.write_json(self.path, data, durable=False)


def partial_path(output: str) -> str:
    """Where a build writing ``output`` keeps its finished work (``table.json.partial``)."""
    return f"{output}.partial"


def build_table(
    space: space_lib.SearchSpace,
    image_size: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    target: str = "cpu",
    progress: bool = True,
    cache: str | None = None,
    warmup: int = DEFAULT_WARMUP,
    rounds: int = DEFAULT_ROUNDS,
    invokes: int = DEFAULT_INVOKES,
    seed: int = 0,
    entries: Sequence[cost_model.Entry] | None = None,
    _state: _Partial | None = None,
) -> cost_model.CostModel:
    """Times every entry (``table_entries`` unless ``entries``) on this CPU; ``cache``: a partial
    JSON written every ``SAVE_SECONDS`` and on any exit (a kill loses at most that much), resumed
    from with the same settings only. b0 = 0, alpha = 1."""
    if target != "cpu":
        raise ValueError(f"this machine times the cpu target only, not {target!r}")
    todo = list(entries) if entries is not None else cost_model.table_entries(space, image_size)
    state = _state or _Partial.open(cache, _key(space, image_size, num_classes, warmup, rounds,
                                                invokes, seed))  # fmt: skip
    done = sum(e in state.entries for e in todo)
    bar = Progress("latency table", len(todo), "entries", start=done, enabled=progress)
    try:
        for e in todo:
            if e in state.entries:
                continue
            data = entry_tflite(e, num_classes, seed)
            ms, spread = time_tflite(data, warmup, rounds, invokes, seed)
            state.entries[e] = (ms, spread, rounds * invokes)
            state.save(every=SAVE_SECONDS)  # a big table's file is MBs: not after every entry
            done += 1
            bar.update(done, f"{e.describe()}: {ms:.4f} ms")
    finally:  # an error or Ctrl-C keeps every finished entry
        state.save()
    bar.close()
    return cost_model.CostModel(
        entries={e: state.entries[e][0] for e in todo},
        spread={e: state.entries[e][1] for e in todo},
        counts={e: state.entries[e][2] for e in todo},
        target=target, runtime=RUNTIME, dtype="float32", image_size=image_size,
        num_classes=num_classes, space=space.name,
    )  # fmt: skip


def _key(space, image_size, num_classes, warmup, rounds, invokes, seed, **extra) -> dict:
    return {"space": space.name, "image_size": image_size, "num_classes": num_classes,
            "runtime": RUNTIME, "warmup": warmup, "rounds": rounds, "invokes": invokes,
            "seed": seed, **extra}  # fmt: skip


def random_architectures(
    space, n: int, rng: np.random.Generator, exclude=(), strict: bool = True
) -> list[np.ndarray]:
    """``n`` architectures of distinct decoded tables, none of ``exclude`` (index arrays); fewer
    where the space has fewer left and not ``strict``."""
    seen = {tuple(space_lib.decode(space, i).blocks) for i in exclude}
    out = []
    for _ in range(1000 * max(n, 1) if strict else 2 * n + 100):
        if len(out) == n:
            break
        idx = space_lib.random_indices(space, rng)
        blocks = tuple(space_lib.decode(space, idx).blocks)
        if blocks not in seen:
            seen.add(blocks)
            out.append(idx)
    if len(out) < n and strict:
        raise ValueError(f"the space {space.name!r} has fewer than {n} distinct architectures left")
    return out


def spread_architectures(
    space,
    n: int,
    rng: np.random.Generator,
    table: cost_model.CostModel,
    exclude=(),
    pool: int = DEFAULT_POOL,
) -> list[np.ndarray]:
    """``n`` distinct architectures spread evenly over the latency range the space reaches: from
    ``pool`` uniform draws (no timing needed, the table's raw sum prices each), the nearest to ``n``
    points spaced evenly in log raw sum between the pool's 0.1% and 99.9% quantiles.

    Uniform draws alone crowd the middle: 30 of them spanned 1.5-8.5 ms of a space whose
    architectures reach 0.9-11 ms, and a search asked for a fast network lands below that range,
    where the calibration line was only extrapolated. (Spreading did not cure the one network that
    prompted it: the 1.4 ms search's result is over-priced by 24.8% with either calibration on the
    same machine, so its error is in the sum of its pieces; see the README's demonstration.)"""
    if n < 1:
        return []
    draws = random_architectures(space, max(pool, n), rng, exclude=exclude, strict=False)
    if len(draws) < n:
        raise ValueError(f"the space {space.name!r} has fewer than {n} distinct architectures left")
    sums = np.log([table.table_sum(space_lib.decode(space, i)) for i in draws])
    lo, hi = np.quantile(sums, [0.001, 0.999])
    free = np.ones(len(draws), bool)
    out = []
    for point in np.linspace(lo, hi, n):
        k = int(np.argmin(np.where(free, np.abs(sums - point), np.inf)))
        free[k] = False
        out.append(draws[k])
    return out


def build_calibrated_table(
    space: space_lib.SearchSpace,
    image_size: int,
    output: str,
    num_classes: int = DEFAULT_NUM_CLASSES,
    calibration: int = DEFAULT_CALIBRATION,
    holdout: int = DEFAULT_HOLDOUT,
    warmup: int = DEFAULT_WARMUP,
    rounds: int = DEFAULT_ROUNDS,
    invokes: int = DEFAULT_INVOKES,
    seed: int = 0,
    progress: bool = True,
) -> cost_model.CostModel:
    """The CPU table of ``space``, calibrated on ``calibration`` random networks, with the accuracy
    on ``holdout`` others; written to ``output`` (and the per-entry CSV beside it)."""
    if calibration < 1:
        raise ValueError("--calibration needs at least one measured network")
    timing = dict(warmup=warmup, rounds=rounds, invokes=invokes, seed=seed)
    state = _Partial.open(partial_path(output), _key(space, image_size, num_classes, **timing))
    table = build_table(space, image_size, num_classes, "cpu", progress, **timing, _state=state)
    rng = np.random.default_rng(seed + 1)
    cal = spread_architectures(space, calibration, rng, table)
    held = spread_architectures(space, holdout, rng, table, exclude=cal)
    net = dict(image_size=image_size, num_classes=num_classes, progress=progress, cache=state,
               **timing)  # fmt: skip
    cal_specs = [space_lib.decode(space, i) for i in cal]
    table = cost_model.calibrate(table, cal_specs, measure_networks(cal_specs, label="calibration",
                                                                     **net))  # fmt: skip
    if holdout:
        held_specs = [space_lib.decode(space, i) for i in held]
        measured = measure_networks(held_specs, label="held-out", **net)
        predicted = [table.predict(s) for s in held_specs]
        on = f"{holdout} held-out random architectures spread over the latency range (seed {seed + 1})"
    else:  # the calibration set itself: optimistic, said so
        measured = measure_networks(cal_specs, label="calibration", **net)
        predicted = [table.predict(s) for s in cal_specs]
        on = f"the {calibration} calibration architectures (no held-out set)"
    table = dataclasses.replace(table, report=cost_model.accuracy(predicted, measured, on))
    table.save(output)
    table.write_csv(os.path.splitext(output)[0] + ".csv")
    os.remove(state.path)
    return table


HOW_TO_TEXT = """\
Latency of {n} random architectures of the search space "{space}" ({fmt}, {size}x{size} uint8 input,
raw outputs, no post-processing), for fitting a latency table of a device this machine cannot reach.

1. Time every arch_*.tflite file on the device with TFLite's standard benchmark tool, e.g.

     adb push arch_000.tflite /data/local/tmp/
     adb shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/arch_000.tflite \\
         --num_threads=1 --num_runs=50 --warmup_runs=5      # CPU (XNNPACK)
     # GPU: add --use_gpu=true; Hexagon DSP: --use_hexagon=true;
     # EdgeTPU: edgetpu_compiler arch_000.tflite first, then benchmark arch_000_edgetpu.tflite
     #          with --external_delegate_path=libedgetpu.so.1

   and take "Inference timings in us: ... Inference (avg): X" (X / 1000 ms) for each file.
2. Fill in measured.csv (columns: file, latency_ms); leave a row empty if a file failed.
3. Fit the table (per-entry weights by ridge regression, accuracy by cross-validation):

     python -m mobiledet_jax.latency_table --target={target} --space={space} --image_size={size} \\
         --fit={dir}/measured.csv --emitted_dir={dir} --output=<table.json>

architectures.json / architectures.csv hold each file's decision indices and decoded backbone table.
"""


def emit_random(
    space: space_lib.SearchSpace,
    n: int,
    output_dir: str,
    image_size: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    fmt: str = "int8",
    seed: int = 0,
    target: str | None = None,
    representative: int = DEFAULT_REPRESENTATIVE,
    progress: bool = True,
) -> list[str]:
    """Writes ``n`` random architectures as .tflite files (``arch_000.tflite``, ...) with
    ``architectures.json`` / ``.csv``, a ``measured.csv`` to fill and ``HOW_TO_MEASURE.txt``."""
    from mobiledet_jax.models import specs as specs_lib

    os.makedirs(output_dir, exist_ok=True)
    archs = random_architectures(space, n, np.random.default_rng(seed))
    meta = {"schema": "mobiledet_jax.emitted_architectures", "space": space.name,
            "target": target or space.target, "image_size": image_size,
            "num_classes": num_classes, "fmt": fmt, "seed": seed}  # fmt: skip
    rows = []
    bar = Progress("emit", n, "files", enabled=progress)
    for i, idx in enumerate(archs):
        spec = space_lib.decode(space, idx)
        name = f"arch_{i:03d}.tflite"
        data = network_tflite(spec, image_size, num_classes, fmt, seed + i, representative)
        atomic_files.write_bytes(os.path.join(output_dir, name), data)
        rows.append({"file": name, "indices": [int(v) for v in idx],
                     "spec": specs_lib.spec_to_dict(spec)})  # fmt: skip
        atomic_files.write_json(os.path.join(output_dir, "architectures.json"),
                                {**meta, "architectures": rows}, indent=1)  # fmt: skip
        bar.update(i + 1, name)
    bar.close()
    buf = [["file", "indices", "spec"]] + [
        [r["file"], " ".join(map(str, r["indices"])), json.dumps(r["spec"], sort_keys=True)]
        for r in rows
    ]
    _write_csv(os.path.join(output_dir, "architectures.csv"), buf)
    measured = os.path.join(output_dir, "measured.csv")
    if not os.path.exists(measured):  # never overwrite the user's timings
        _write_csv(measured, [["file", "latency_ms"]] + [[r["file"], ""] for r in rows])
    text = HOW_TO_TEXT.format(n=n, space=space.name, fmt=fmt, size=image_size,
                              target=meta["target"], dir=output_dir)  # fmt: skip
    atomic_files.write_text(os.path.join(output_dir, HOW_TO), text)
    return [r["file"] for r in rows]


def _write_csv(path: str, rows: list[list]) -> None:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    atomic_files.write_text(path, buf.getvalue())


def read_measured(emitted_dir: str, measured_csv: str):
    """(emitted metadata, the measured architectures' specs, their ms), rows with a value only."""
    from mobiledet_jax.models import specs as specs_lib

    with open(os.path.join(emitted_dir, "architectures.json")) as f:
        meta = json.load(f)
    by_file = {a["file"]: a for a in meta["architectures"]}
    with open(measured_csv, newline="") as f:
        reader = csv.DictReader(f)
        if not {"file", "latency_ms"} <= set(reader.fieldnames or []):
            raise ValueError(f"{measured_csv}: expected columns file, latency_ms")
        rows = [r for r in reader if (r["latency_ms"] or "").strip()]
    specs, ms = [], []
    for r in rows:
        name = os.path.basename(r["file"].strip())
        if name not in by_file:
            raise ValueError(f"{measured_csv}: {name} is not one of the files in {emitted_dir}")
        specs.append(specs_lib.spec_from_dict(by_file[name]["spec"]))
        ms.append(float(r["latency_ms"]))
    if len(ms) < 2:
        raise ValueError(f"{measured_csv}: {len(ms)} timed files; at least 2 are needed")
    return meta, specs, np.array(ms)


def _folds(n: int, folds: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [f for f in np.array_split(order, min(max(folds, 2), n)) if f.size]


def fit_table(
    space: space_lib.SearchSpace,
    emitted_dir: str,
    measured_csv: str,
    ridge: float = DEFAULT_RIDGE,
    folds: int = DEFAULT_FOLDS,
    nonneg: bool = False,
    prior: cost_model.CostModel | None = None,
    seed: int = 0,
) -> cost_model.CostModel:
    """Per-entry weights fitted to the user's timings of ``emit_random``'s files (ridge toward 0,
    or toward ``prior``'s values scaled to the timings), accuracy by ``folds``-fold
    cross-validation; the returned model is fitted on all timings."""
    meta, specs, ms = read_measured(emitted_dir, measured_csv)
    if meta["space"] != space.name:
        raise ValueError(
            f"{emitted_dir} holds architectures of {meta['space']!r}, not {space.name!r}"
        )
    size = int(meta["image_size"])
    entries = cost_model.table_entries(space, size)
    archs = [cost_model.entries_of(s, size) for s in specs]
    x = cost_model.features(archs, entries)
    p = None if prior is None else np.array([prior.entries.get(e, 0.0) for e in entries])

    def fit(rows):
        scaled = None
        if p is not None:
            xp = x[rows] @ p
            scaled = p * float(xp @ ms[rows] / max(xp @ xp, 1e-12))
        picked = [archs[r] for r in rows]
        return cost_model.fit_from_measurements(picked, ms[rows], entries, ridge, nonneg, scaled)

    predicted = np.zeros_like(ms)
    parts = _folds(len(ms), folds, seed)
    for part in parts:
        train = np.setdiff1d(np.arange(len(ms)), part)
        predicted[part] = x[part] @ fit(train)
    weights = fit(np.arange(len(ms)))
    on = f"{len(parts)}-fold cross-validation over {len(ms)} measured architectures"
    return cost_model.CostModel(
        entries={e: float(w) for e, w in zip(entries, weights, strict=True)},
        counts={e: int(c) for e, c in zip(entries, x.sum(0), strict=True)},
        target=meta["target"], runtime="benchmark_model (user timings)", dtype=meta["fmt"],
        image_size=size, num_classes=meta["num_classes"], space=space.name,
        report=cost_model.accuracy(predicted, ms, on),
        calibration={"method": "ridge", "ridge": ridge, "nonneg": nonneg, "n": len(ms),
                     "prior": None if prior is None else prior.target},
    )  # fmt: skip


def import_entries(
    entries_csv: str,
    num_classes: int | None = None,
    emitted_dir: str | None = None,
    measured_csv: str | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> cost_model.CostModel:
    """A user's per-entry CSV table; with timed emitted networks, b0 and alpha are fitted to them
    (accuracy by ``folds``-fold cross-validation of that fit). Without, the model has no report."""
    table = cost_model.read_csv(entries_csv, num_classes)
    if not measured_csv:
        return table
    meta, specs, ms = read_measured(emitted_dir, measured_csv)
    table = dataclasses.replace(table, space=meta["space"])
    predicted = np.zeros_like(ms)
    parts = _folds(len(ms), folds, seed)
    for part in parts:
        train = np.setdiff1d(np.arange(len(ms)), part)
        fitted = cost_model.calibrate(table, [specs[i] for i in train], ms[train])
        predicted[part] = [fitted.predict(specs[i]) for i in part]
    table = cost_model.calibrate(table, specs, ms)
    on = f"{len(parts)}-fold cross-validation of the b0/alpha fit over {len(ms)} architectures"
    return dataclasses.replace(table, report=cost_model.accuracy(predicted, ms, on))
