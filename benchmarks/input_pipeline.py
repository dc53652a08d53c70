"""Input pipeline throughput: augmented training batches against pure JPEG decoding.

    python benchmarks/input_pipeline.py [--num_images=256] [--batch_size=32] [--seconds=15]

Writes ``num_images`` 640x480 JPEGs (textured synthetic scenes) as a COCO-format dataset, prepares
it into record shards, then measures on the same records in the same run, alternating rounds:

- decode: read records, parse, ``decode_jpeg`` the full image, batch (tf.data, AUTOTUNE);
- pipeline: ``build_train_iterator`` (flip + ssd_random_crop + decode of the crop window + resize
  to 320x320 + scale + pad boxes + batch), including assembly of the global ``jax.Array``s.

Reports images/s, images/s per CPU core available to this process, and pipeline/decode (target
>= 0.7). Prints one JSON line at the end for scripts.
"""

import argparse
import json
import os
import pathlib
import tempfile
import time

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from mobiledet_jax import sharding
from mobiledet_jax.data import coco_source, data_config, sources, synthetic
from mobiledet_jax.data.iterators import build_train_iterator


def _rate(batches, batch_size: int, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        next(batches)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(batches)
        jax.block_until_ready(batch) if isinstance(batch, dict) else None
        count += batch_size
    return count / (time.perf_counter() - start)


def _decode_only(split, batch_size: int):
    ds = split.dataset(0, 1, training=True, seed=0)
    ds = ds.map(
        lambda ex: tf.io.decode_jpeg(ex["image/encoded"], channels=3),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    return iter(ds.as_numpy_iterator())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_images", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0, help="per measurement round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default="", help="dataset folder (default: a temporary one)")
    args = p.parse_args()

    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="input_bench_"))
    coco = workdir / "coco"
    if not (coco / "instances.json").is_file():
        synthetic.generate_split(coco, args.num_images, seed=0, split_id=0, image_size=(480, 640))
    sizes = [f.stat().st_size for f in (coco / "images").iterdir()]
    prepared = coco_source.prepare(
        coco / "instances.json", coco / "images", workdir / "prepared", num_shards=8, progress=False
    )
    cfg = data_config()
    cfg.source = "coco_json"
    cfg.coco_json.train_annotations = str(coco / "instances.json")
    cfg.coco_json.train_images = str(coco / "images")
    cfg.coco_json.prepared_dir = str(workdir / "prepared_cfg")
    cfg.num_shards = 8
    cfg.shuffle_buffer = 256
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1}))
    batch = args.batch_size - args.batch_size % jax.device_count()

    split = sources.RecordSplit(prepared)
    decode, pipeline = [], []
    for _ in range(args.rounds):
        decode.append(_rate(_decode_only(split, batch), batch, args.seconds))
        train = build_train_iterator(cfg, batch, 320, mesh, seed=0)
        pipeline.append(_rate(train, batch, args.seconds))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {
        "cores": cores,
        "images": args.num_images,
        "mean_jpeg_kb": float(np.mean(sizes) / 1024),
        "batch_size": batch,
        "decode_images_per_s": float(np.mean(decode)),
        "pipeline_images_per_s": float(np.mean(pipeline)),
        "decode_images_per_s_per_core": float(np.mean(decode) / cores),
        "pipeline_images_per_s_per_core": float(np.mean(pipeline) / cores),
        "ratio": float(np.mean(pipeline) / np.mean(decode)),
        "device": str(jax.devices()[0].platform),
    }
    print(f"{args.num_images} JPEGs 640x480 (mean {result['mean_jpeg_kb']:.0f} KB), {cores} cores")
    print(
        f"decode only:          {result['decode_images_per_s']:8.1f} img/s  "
        f"{result['decode_images_per_s_per_core']:7.1f} img/s/core"
    )
    print(
        f"augmented 320x320:    {result['pipeline_images_per_s']:8.1f} img/s  "
        f"{result['pipeline_images_per_s_per_core']:7.1f} img/s/core"
    )
    print(f"pipeline / decode:    {result['ratio']:8.2f}   (target >= 0.7)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
