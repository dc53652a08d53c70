"""Times the detection math against the model's forward pass, all jitted, on the default device.

    PYTHONPATH=. python benchmarks/detection_math.py         # batch 64, 320x320, 100 gt boxes
    PYTHONPATH=. python benchmarks/detection_math.py --no-model   # detection math only
    PYTHONPATH=. python benchmarks/detection_math.py --batch=8 --repeats=3

Reports milliseconds (median of ``--repeats`` runs after a compile run) for:
- ``assign+loss``: batch target assignment + SSD loss (forward);
- ``assign+loss+grad``: the same with the gradient w.r.t. the predictions (what a train step adds);
- ``nms``: decoding + per-class NMS with the default top-K tiers, and ``nms_all_anchors`` without
  pre-selection (the exact fallback);
- ``model_forward``: ``model.apply(variables, images, train=False)``;
and the ratios of the detection math to the forward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mobiledet_jax.detection import anchors as anchor_lib
from mobiledet_jax.detection import losses, postprocess, target_assigner


def _time(fn, *args, repeats: int) -> float:
    """Median wall time in ms of ``fn(*args)`` after one compile/warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _ground_truth(rng, batch: int, max_boxes: int, num_classes: int):
    centre = rng.uniform(0.05, 0.95, (batch, max_boxes, 2))
    size = rng.uniform(0.02, 0.6, (batch, max_boxes, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], -1), 0, 1)
    classes = rng.integers(0, num_classes, (batch, max_boxes))
    return boxes.astype(np.float32), classes.astype(np.int32), np.ones((batch, max_boxes), bool)


def _predictions(rng, batch: int, num_anchors: int, num_classes: int):
    box_encodings = rng.normal(0, 0.5, (batch, num_anchors, 4)).astype(np.float32)
    # Mostly background with a heavy tail, roughly like a trained detector.
    logits = rng.normal(-6.0, 2.0, (batch, num_anchors, num_classes + 1)).astype(np.float32)
    return box_encodings, logits


def _model_forward(args, rng):
    """(jitted forward fn, its inputs) or None when the model cannot be built."""
    try:
        from mobiledet_jax import config as config_lib
        from mobiledet_jax.models import build_model
    except ImportError as e:  # the model zoo is optional for this benchmark
        print(f"model not importable ({e}); use --no-model", file=sys.stderr)
        raise
    config = config_lib.base_config(args.model)
    model = build_model(config.model)
    images = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(
        np.float32
    )
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)["class_logits"])
    return fwd, (variables, jnp.asarray(images))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image_size", "--image-size", type=int, default=320)
    parser.add_argument("--max_boxes", "--max-boxes", type=int, default=100)
    parser.add_argument("--num_classes", "--num-classes", type=int, default=90)
    parser.add_argument("--model", default="mobiledet_edgetpu")
    parser.add_argument("--no-model", "--no_model", dest="no_model", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    anchors = anchor_lib.anchors_for_image(args.image_size, args.image_size)
    num_anchors, c = anchors.shape[0], args.num_classes
    gt_boxes, gt_classes, gt_mask = (
        jnp.asarray(x) for x in _ground_truth(rng, args.batch, args.max_boxes, c)
    )
    box_encodings, logits = (jnp.asarray(x) for x in _predictions(rng, args.batch, num_anchors, c))

    def loss_fn(enc, lg, boxes, classes, mask):
        targets = target_assigner.batch_assign_targets(anchors, boxes, classes, mask, c)
        return losses.detection_loss(enc, lg, targets)["total_loss"]

    assign_loss = jax.jit(loss_fn)
    assign_loss_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    all_anchors = dataclasses.replace(
        postprocess.NmsSettings.reference(), candidates_per_class=None
    )
    nms = jax.jit(lambda e, lg: postprocess.postprocess(e, lg, anchors))
    nms_all = jax.jit(lambda e, lg: postprocess.postprocess(e, lg, anchors, all_anchors))

    gt = (gt_boxes, gt_classes, gt_mask)
    results = {
        "device": str(jax.devices()[0].device_kind),
        "batch": args.batch,
        "image_size": args.image_size,
        "max_boxes": args.max_boxes,
        "num_anchors": num_anchors,
        "assign+loss_ms": _time(assign_loss, box_encodings, logits, *gt, repeats=args.repeats),
        "assign+loss+grad_ms": _time(
            assign_loss_grad, box_encodings, logits, *gt, repeats=args.repeats
        ),
        "nms_ms": _time(nms, box_encodings, logits, repeats=args.repeats),
        "nms_all_anchors_ms": _time(nms_all, box_encodings, logits, repeats=args.repeats),
    }
    if not args.no_model:
        fwd, inputs = _model_forward(args, rng)
        model_logits = fwd(*inputs)
        assert model_logits.shape == (args.batch, num_anchors, c + 1), model_logits.shape
        results["model"] = args.model
        results["model_forward_ms"] = _time(fwd, *inputs, repeats=args.repeats)
        for key in ("assign+loss", "assign+loss+grad", "nms"):
            results[f"{key}/forward"] = results[f"{key}_ms"] / results["model_forward_ms"]

    width = max(len(k) for k in results)
    for key, value in results.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
