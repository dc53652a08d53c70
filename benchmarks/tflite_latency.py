"""TFLite latency of our JAX exports beside the same architectures built natively in Keras.

    python benchmarks/tflite_latency.py [--models=mobiledet_edgetpu,mobiledet_cpu,...] \
        [--formats=float32,int8] [--image_size=320] [--runs=50] [--repeats=5] [--kernels=xnnpack]

For each model: random weights (``models.random_weights``) go into the Flax model and, copied, into
the Keras model of ``keras_ssdlite.py`` (outputs checked equal before conversion). Both go through
the same TFLiteConverter with the same settings (float32; int8 PTQ with the same representative
images, uint8 input, uint8 outputs). Then, in one process and interleaved, ``repeats`` rounds of
``runs`` timed invokes after 5 warm-up invokes, batch 1, 1 thread; the median of each round, and the
median over rounds is reported with its range. Prints a markdown table (latency, ratio ours/Keras,
op counts side by side, sizes) and a final JSON line.

int8 files are ours as exported (``export.int8_kernels``: HARD_SWISH as MUL, ADD, MUL and global
AVERAGE_POOL_2D as MEAN, so that XNNPACK runs them in int8); where that changes the file, the
converter's own graph (``int8_hard_swish="op"``, ``int8_global_pool="avg_pool"``) is timed in the
same rounds too, as ``jax_converter_ops``: the before/after of the rewrite.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_ssdlite  # noqa: E402

from mobiledet_jax import config as config_lib  # noqa: E402
from mobiledet_jax.export import convert  # noqa: E402
from mobiledet_jax.models import (
    build_model,  # noqa: E402
    random_weights,  # noqa: E402
)
from mobiledet_jax.tflite import flatbuffer, runtime  # noqa: E402


def keras_tflite(model_config, variables, fmt, representative) -> bytes:
    import tensorflow as tf

    kmodel, builder = keras_ssdlite.build(model_config, "float32" if fmt == "int8" else "uint8")
    keras_ssdlite.copy_weights(builder, variables)
    conv = tf.lite.TFLiteConverter.from_keras_model(kmodel)
    return convert.run_converter(conv, fmt, representative)


def check_equal(model, variables, model_config, size):
    """Keras and Flax outputs on one image before any conversion."""
    kmodel, builder = keras_ssdlite.build(model_config)
    keras_ssdlite.copy_weights(builder, variables)
    from mobiledet_jax.export.exporter import jax_raw

    px = np.random.default_rng(0).integers(0, 256, (1, *size, 3)).astype(np.uint8)
    kb, kc = (np.asarray(t) for t in kmodel(px, training=False))
    jb, jc = jax_raw(model, variables, px)
    return float(max(np.abs(kb - jb).max(), np.abs(kc - jc).max()))


def measure(files: dict[str, bytes], runs: int, repeats: int, xnnpack: bool) -> dict:
    rounds = {k: [] for k in files}
    for _ in range(repeats):
        for k, data in files.items():
            rounds[k].append(runtime.latency_ms(data, runs=runs, xnnpack=xnnpack))
    return {k: (float(np.median(v)), float(min(v)), float(max(v))) for k, v in rounds.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--models", default="mobiledet_edgetpu,mobiledet_cpu,mobiledet_dsp,mobiledet_gpu"
    )
    ap.add_argument("--formats", default="float32,int8")
    ap.add_argument("--image_size", type=int, default=320)
    ap.add_argument("--num_classes", type=int, default=90)
    ap.add_argument("--representative_images", type=int, default=16)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kernels", choices=["xnnpack", "builtin"], default="xnnpack")
    args = ap.parse_args()
    size = (args.image_size, args.image_size)
    rng = np.random.default_rng(0)
    rep_images = list(rng.integers(0, 256, (args.representative_images, *size, 3)).astype(np.uint8))
    results = []
    for name in args.models.split(","):
        mc = config_lib.model_config(name)
        mc.image_size, mc.num_classes = args.image_size, args.num_classes
        model = build_model(mc)
        variables = random_weights.random_variables(model, size, seed=0)
        diff = check_equal(model, variables, mc, size)
        for fmt in args.formats.split(","):
            rep = convert.representative_pixels(rep_images) if fmt == "int8" else None
            t = time.time()
            ours = convert.convert(model, variables, size, fmt, representative_images=rep_images)
            t_ours = time.time() - t
            theirs = keras_tflite(mc, variables, fmt, rep)
            files = {"jax": ours, "keras": theirs}
            if fmt == "int8":
                plain = convert.convert(model, variables, size, fmt, representative_images=rep_images,
                                        int8_hard_swish="op", int8_global_pool="avg_pool")  # fmt: skip
                if plain != ours:
                    files["jax_converter_ops"] = plain
            lat = measure(files, args.runs, args.repeats, args.kernels == "xnnpack")
            row = {
                "model": name, "format": fmt, "keras_vs_flax_max_diff": diff,
                "latency_ms": lat, "ratio": lat["jax"][0] / lat["keras"][0],
                "ops": {"jax": flatbuffer.op_counts(ours), "keras": flatbuffer.op_counts(theirs)},
                "size_bytes": {"jax": len(ours), "keras": len(theirs)},
                "convert_s": t_ours,
            }  # fmt: skip
            results.append(row)
            print_row(row, args)
    print(json.dumps({"kernels": args.kernels, "threads": 1, "results": results}))


def print_row(r, args):
    (jm, jlo, jhi), (km, klo, khi) = r["latency_ms"]["jax"], r["latency_ms"]["keras"]
    print(f"\n## {r['model']} {r['format']} ({args.image_size}x{args.image_size}, 1 thread, "
          f"{args.kernels}, median of {args.repeats}x{args.runs})")  # fmt: skip
    print(f"JAX export {jm:.2f} ms ({jlo:.2f}-{jhi:.2f}), Keras {km:.2f} ms ({klo:.2f}-{khi:.2f}), "
          f"ratio {r['ratio']:.3f}; sizes {r['size_bytes']['jax'] / 1e6:.2f} / "
          f"{r['size_bytes']['keras'] / 1e6:.2f} MB; Keras vs Flax before conversion "
          f"{r['keras_vs_flax_max_diff']:.1e}")  # fmt: skip
    if "jax_converter_ops" in r["latency_ms"]:
        pm, plo, phi = r["latency_ms"]["jax_converter_ops"]
        print(f"JAX export with the converter's HARD_SWISH / AVERAGE_POOL_2D: {pm:.2f} ms "
              f"({plo:.2f}-{phi:.2f}), {pm / jm:.2f}x the rewritten file")  # fmt: skip
    ops = r["ops"]
    names = sorted(set(ops["jax"]) | set(ops["keras"]))
    print("| op | JAX export | Keras |\n|---|---|---|")
    for n in names:
        print(f"| {n} | {ops['jax'].get(n, 0)} | {ops['keras'].get(n, 0)} |")
    print(f"| total | {sum(ops['jax'].values())} | {sum(ops['keras'].values())} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
