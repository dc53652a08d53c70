"""Our train step beside the same train step in TensorFlow, timed interleaved in one process.

    python benchmarks/train_step_vs_tf.py [--models=mobiledet_cpu,mobiledet_edgetpu,...] \
        [--image_size=320] [--batch_size=8] [--steps=5] [--warmup=1] [--quickstart] \
        [--json=out.json] [--markdown=benchmarks/results/train_step_vs_tf.md]

Ours: the jitted step of ``mobiledet_jax.training.step.train_step_for_config`` (imported, as the
trainer builds it: forward, target assignment, loss, gradient, SGD update, metrics). TensorFlow:
the same network, the Keras twin of ``keras_ssdlite.py`` with our initial weights copied in,
called with ``training=True`` (batch statistics, our BN momenta; training-mode BN on TensorFlow's
fused kernel, ``--tf_batchnorm=keras`` for Keras 3's unfused one), the same loss
(``tf_detection_loss.py``: focal + smooth-L1 with TF OD API normalization, L2 on every conv
kernel), the same optimizer (Keras SGD with our momentum, its learning rate our schedule at every
step), as one ``tf.function(jit_compile=False)`` of ``GradientTape`` + ``apply``: TensorFlow's
default CPU kernels, no XLA.

The batch is ``train_throughput.py``'s synthetic one (random images in [-1, 1], 4 random boxes per
image). Its targets are computed once by our target assigner and handed to the TensorFlow step
(the same targets); ours assigns them inside its step, every step, as in training.

Check: the loss of step 1 (before any update) of both, equal within ``--rtol``; the step-1
gradient norms and the loss of step 2 (after one update: the gradients and the optimizer) are
printed beside it (they agree to a few 1e-4: float32 rounding through ~100 batch-normalized layers
at the first, large, step; TensorFlow's fused and Keras BN differ from each other as much). Then ``--warmup`` untimed
and ``--steps`` timed steps, alternating ours and TensorFlow; the median step time of each and the
ratio ours / TensorFlow (below 1: ours is faster). Both frameworks use every core by default
(XLA's CPU thread pool; TensorFlow intra/inter-op 0 = all, ``--tf_intra_op`` / ``--tf_inter_op``);
the settings are printed. ``--quickstart``: the quickstart's size instead (configs/quickstart.py:
image size, width multiplier, classes and batch). Prints a table, one JSON line per model; exits 1
when a step-1 loss differs. ``python -m`` is not needed: the repository root is put on
``sys.path``.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import keras  # noqa: E402
import keras_ssdlite  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_detection_loss  # noqa: E402
from train_throughput import MOBILEDETS, synthetic_batch  # noqa: E402

from mobiledet_jax import sharding as sharding_lib  # noqa: E402
from mobiledet_jax.config import base_config  # noqa: E402
from mobiledet_jax.detection import anchors as anchors_lib  # noqa: E402
from mobiledet_jax.detection import losses, matcher, target_assigner  # noqa: E402
from mobiledet_jax.models import input_size  # noqa: E402
from mobiledet_jax.training import state as state_lib  # noqa: E402
from mobiledet_jax.training import step as step_lib  # noqa: E402


def quickstart_sizes() -> dict:
    """Image size, width multiplier, classes and batch of configs/quickstart.py."""
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "configs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    return {
        "image_size": c.model.image_size,
        "width_multiplier": c.model.width_multiplier,
        "num_classes": c.model.num_classes,
        "batch_size": c.train.batch_size,
    }


def make_config(name: str, sizes: dict) -> ml_collections.ConfigDict:
    config = base_config(name)
    config.model.image_size = sizes["image_size"]
    config.model.width_multiplier = sizes["width_multiplier"]
    config.model.num_classes = sizes["num_classes"]
    config.train.batch_size = sizes["batch_size"]
    return config


def our_targets(config, batch) -> dict[str, np.ndarray]:
    """The batch's per-anchor targets from our target assigner, as numpy."""
    anchors = anchors_lib.anchors_from_config(config.detection.anchors, *input_size(config.model))
    t = target_assigner.batch_assign_targets(
        anchors,
        batch["gt_boxes"],
        batch["gt_classes"],
        batch["gt_mask"],
        config.model.num_classes,
        matcher.MatcherSettings.from_config(config.detection.matcher),
    )
    return {
        "cls_targets": np.asarray(t.cls_targets, np.float32),
        "cls_weights": np.asarray(t.cls_weights, np.float32),
        "reg_targets": np.asarray(t.reg_targets, np.float32),
        "positive": np.asarray(t.positive, np.float32),
    }


def make_tf_step(config, variables, batch_size: int, batchnorm: str):
    """The TensorFlow train step ``(images, targets) -> metrics`` and the Keras model."""
    kmodel, builder = keras_ssdlite.build(
        config.model, batch_size=batch_size, preprocessed=True, batchnorm=batchnorm
    )
    keras_ssdlite.copy_weights(builder, variables)
    kernels = [layer.kernel for layer, _, kind in builder.copies if kind != "bn"]
    train = config.train
    optimizer = keras.optimizers.SGD(
        learning_rate=tf_detection_loss.CosineDecayWithWarmup(train),
        momentum=train.momentum,
        nesterov=False,
        global_clipnorm=train.grad_clip_norm if train.grad_clip_norm > 0 else None,
    )
    trainable = kmodel.trainable_variables
    optimizer.build(trainable)
    settings = losses.LossSettings.from_config(config.detection.loss)

    @tf.function(jit_compile=False)
    def tf_step(images, targets):
        with tf.GradientTape() as tape:
            box_encodings, class_logits = kmodel(images, training=True)
            terms = tf_detection_loss.detection_loss(box_encodings, class_logits, targets, settings)
            l2 = tf_detection_loss.l2_regularization(kernels, train.l2_weight)
            loss = terms["total_loss"] + l2
        grads = tape.gradient(loss, trainable)
        optimizer.apply(grads, trainable)
        return {
            "loss": loss,
            "classification_loss": terms["classification_loss"],
            "localization_loss": terms["localization_loss"],
            "l2_loss": l2,
            "num_matches": terms["num_matches"],
            "grad_norm": tf.linalg.global_norm(grads),
        }

    return tf_step, kmodel


def bench_model(name: str, sizes: dict, args, mesh) -> dict:
    config = make_config(name, sizes)
    batch_size = sizes["batch_size"]
    model, optimizer, step = step_lib.train_step_for_config(config, mesh)
    size = input_size(config.model)
    state = state_lib.create_train_state(model, optimizer, size, jax.random.key(0), mesh)
    batch = synthetic_batch(config, batch_size, sharding_lib.batch_sharding(mesh))
    variables = jax.device_get(state.variables)  # before ours donates the state

    start = time.perf_counter()
    ours = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    with tf.device("/CPU:0"):
        images = tf.constant(np.asarray(batch["image"]))
        targets = {k: tf.constant(v) for k, v in our_targets(config, batch).items()}
        start = time.perf_counter()
        tf_step, _ = make_tf_step(config, variables, batch_size, args.tf_batchnorm)
        tf_step.get_concrete_function(images, targets)
        trace_s = time.perf_counter() - start

    def run_ours():
        nonlocal state
        t0 = time.perf_counter()
        state, metrics = ours(state, batch)
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - t0, {k: float(v) for k, v in metrics.items()}

    def run_tf():
        with tf.device("/CPU:0"):
            t0 = time.perf_counter()
            metrics = {k: float(v) for k, v in tf_step(images, targets).items()}
            return time.perf_counter() - t0, metrics

    times = {"ours": [], "tf": []}
    first = {}
    for i in range(args.steps + args.warmup + 1):
        for key, run in (("ours", run_ours), ("tf", run_tf)):
            dt, metrics = run()
            if i < 2:
                first.setdefault(key, []).append(metrics)
            if i > args.warmup:
                times[key].append(dt)

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-12)

    step1 = {k: first[k][0] for k in first}
    step2 = {k: first[k][1] for k in first}  # steps >= 1: there is a step 2
    ours_s, tf_s = statistics.median(times["ours"]), statistics.median(times["tf"])
    return {
        "model": name,
        "image_size": list(size),
        "width_multiplier": sizes["width_multiplier"],
        "num_classes": sizes["num_classes"],
        "batch_size": batch_size,
        "dtype": config.model.compute_dtype,
        "tf_batchnorm": args.tf_batchnorm,
        "ours_compile_s": compile_s,
        "tf_trace_s": trace_s,
        "ours_step_s": ours_s,
        "tf_step_s": tf_s,
        "ratio_ours_over_tf": ours_s / tf_s,
        "ours_step_s_all": times["ours"],
        "tf_step_s_all": times["tf"],
        "step1": step1,
        "step1_loss_rel_diff": rel(step1["ours"]["loss"], step1["tf"]["loss"]),
        "step1_loss_equal": rel(step1["ours"]["loss"], step1["tf"]["loss"]) <= args.rtol,
        "step2": step2,
        "step2_loss_rel_diff": rel(step2["ours"]["loss"], step2["tf"]["loss"]),
    }


def thread_settings() -> dict:
    return {
        "os_cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "jax_devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(default)"),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "jax": jax.__version__,
        "machine": platform.machine(),
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| model | size | width | batch | ours s/step | TF s/step | ours/TF | step-1 loss ours / TF |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        h, w = r["image_size"]
        lo, lt = r["step1"]["ours"]["loss"], r["step1"]["tf"]["loss"]
        lines.append(
            f"| {r['model']} | {h}x{w} | {r['width_multiplier']:g} | {r['batch_size']} "
            f"| {r['ours_step_s']:.3f} | {r['tf_step_s']:.3f} | {r['ratio_ours_over_tf']:.2f} "
            f"| {lo:.6f} / {lt:.6f} |"
        )
    return "\n".join(lines)


def markdown(results, threads, args) -> str:
    flags = [a for a in sys.argv[1:] if not a.startswith(("--json", "--markdown"))]
    cmd = "python benchmarks/train_step_vs_tf.py " + " ".join(flags)
    t = threads
    return (
        "# Our train step / the same train step in TensorFlow (CPU)\n\n"
        f"`{cmd.strip()}`, one run, float32, interleaved in one process; median of "
        f"{args.steps} timed steps after {args.warmup + 1} untimed. Threads: os.cpu_count "
        f"{t['os_cpu_count']}, TF intra-op {t['tf_intra_op']} / inter-op {t['tf_inter_op']} "
        f"(0 = all cores), XLA's CPU pool on all cores; 1-minute load average at the start "
        f"{t['load_average_1min_at_start']} (other jobs on the machine count in it); "
        f"TF training BN: {args.tf_batchnorm}; "
        f"TensorFlow {t['tensorflow']}, Keras {t['keras']}, JAX {t['jax']}.\n\n"
        + table(results)
        + "\n\nours/TF below 1: ours is faster. TensorFlow's step takes the targets precomputed "
        "(our target assigner, once); ours assigns them in its step. Step-1 losses are before any "
        "update, checked equal within "
        f"{args.rtol:g} relative.\n\n" + "".join(_checks(r) for r in results)
    )


def _checks(r: dict) -> str:
    s1, s2 = r["step1"], r["step2"]
    return (
        f"- {r['model']}: step-1 loss rel diff {r['step1_loss_rel_diff']:.1e}, gradient norm "
        f"{s1['ours']['grad_norm']:.4f} / {s1['tf']['grad_norm']:.4f}; step-2 loss (after one "
        f"update) {s2['ours']['loss']:.5f} / {s2['tf']['loss']:.5f} (rel diff "
        f"{r['step2_loss_rel_diff']:.1e}); ours compile {r['ours_compile_s']:.0f} s, TF trace "
        f"{r['tf_trace_s']:.0f} s\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(MOBILEDETS), help="comma-separated model names")
    p.add_argument("--image_size", type=int, default=320)
    p.add_argument("--batch_size", type=int, default=None, help="default 8 (quickstart: its 16)")
    p.add_argument("--width_multiplier", type=float, default=1.0)
    p.add_argument("--num_classes", type=int, default=90)
    p.add_argument("--quickstart", action="store_true", help="the quickstart config's sizes")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the checked step 1")
    p.add_argument("--rtol", type=float, default=1e-4, help="step-1 loss tolerance (relative)")
    p.add_argument("--tf_batchnorm", choices=sorted(keras_ssdlite.BATCHNORMS), default="fused")
    p.add_argument("--tf_intra_op", type=int, default=0, help="0: TensorFlow's default (all)")
    p.add_argument("--tf_inter_op", type=int, default=0, help="0: TensorFlow's default (all)")
    p.add_argument("--json", default="", help="also write all results to this JSON file")
    p.add_argument("--markdown", default="", help="also write the table to this markdown file")
    args = p.parse_args()
    if args.steps < 1:
        p.error("--steps must be at least 1")

    tf.config.set_visible_devices([], "GPU")  # TensorFlow's CPU kernels
    tf.config.threading.set_intra_op_parallelism_threads(args.tf_intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(args.tf_inter_op)
    if args.quickstart:
        sizes = quickstart_sizes()
    else:
        sizes = {
            "image_size": args.image_size,
            "width_multiplier": args.width_multiplier,
            "num_classes": args.num_classes,
            "batch_size": 8,
        }
    if args.batch_size:
        sizes["batch_size"] = args.batch_size

    mesh = sharding_lib.make_mesh(ml_collections.ConfigDict({"data": -1}), jax.devices())
    threads = thread_settings()
    print("threads: " + json.dumps(threads), flush=True)
    results, mismatch = [], False
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = bench_model(name, sizes, args, mesh)
        r["threads"] = threads
        results.append(r)
        s1, s2 = r["step1"], r["step2"]
        print(
            f"{name}: step-1 loss ours {s1['ours']['loss']:.7f} TF {s1['tf']['loss']:.7f} "
            f"(rel diff {r['step1_loss_rel_diff']:.1e}; classification "
            f"{s1['ours']['classification_loss']:.6f} / {s1['tf']['classification_loss']:.6f}, "
            f"localization {s1['ours']['localization_loss']:.6f} / "
            f"{s1['tf']['localization_loss']:.6f}, L2 {s1['ours']['l2_loss']:.6f} / "
            f"{s1['tf']['l2_loss']:.6f}, matches {s1['ours']['num_matches']:g} / "
            f"{s1['tf']['num_matches']:g}, gradient norm {s1['ours']['grad_norm']:.6f} / "
            f"{s1['tf']['grad_norm']:.6f})"
            f"; step-2 loss ours {s2['ours']['loss']:.7f} TF {s2['tf']['loss']:.7f} "
            f"(rel diff {r['step2_loss_rel_diff']:.1e})",
            flush=True,
        )
        if not r["step1_loss_equal"]:
            mismatch = True
            print(f"WARNING: {name}: step-1 losses differ by more than {args.rtol:g}", flush=True)
        print(json.dumps({k: v for k, v in r.items() if k != "threads"}), flush=True)
    print("\n" + table(results))
    print("ours/TF below 1: ours is faster (median step times, interleaved in one process)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    if args.markdown:
        pathlib.Path(args.markdown).write_text(markdown(results, threads, args))
    if mismatch:
        sys.exit(1)


if __name__ == "__main__":
    main()
