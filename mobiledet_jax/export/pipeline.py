"""Checkpoint -> .tflite + report: the library behind ``python -m mobiledet_jax.export``.

Steps: restore the checkpoint; draw the representative images from the training input (int8);
convert (``convert``; int8 of a QAT checkpoint, one with ``quant_stats``, goes through
``qat.convert`` with its trained ranges instead of post-training quantization); measure parity of the raw outputs against JAX on held-out images of the
evaluation split; append ``TFLite_Detection_PostProcess`` (``outputs="postprocessed"``) and the
metadata; run the preflight of the target; COCO mAP of the file vs the JAX model on the evaluation
split; latency; write the file, the anchors (raw outputs) and the report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.export import (
    convert,
    metadata,
    postprocess_op,
    preflight,
    report,
    tflite_model,
    tflite_predict,
)
from mobiledet_jax.models import build_model, input_size

TARGET_FORMATS = {"cpu": "float32", "gpu": "float16", "edgetpu": "int8", "dsp": "int8"}
OUTPUTS = ("raw", "postprocessed")


@dataclasses.dataclass
class ExportOptions:
    target: str = "cpu"
    format: str | None = None  # None: the target's preset
    outputs: str = "postprocessed"
    representative_images: int = 64  # int8 calibration images from the training input
    parity_images: int = 8  # held-out evaluation images for the parity check
    eval_split: str = "val"
    eval_images: int = -1  # COCO evaluation: -1 all of the split, 0 skip
    eval_batch_size: int = 16
    latency_runs: int = 50  # 0 skips the latency measurement
    fast_nms: bool = False  # the post-processing op's class-agnostic "fast" NMS
    float_input: bool = False  # float formats: float32 pixels instead of uint8
    saved_model_dir: str | None = None
    seed: int = 0

    def resolved_format(self) -> str:
        if self.target not in TARGET_FORMATS:
            raise ValueError(f"target must be one of {sorted(TARGET_FORMATS)}, got {self.target!r}")
        if self.outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {self.outputs!r}")
        return self.format or TARGET_FORMATS[self.target]


def _mesh():
    return jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))


def training_pixels(data_config, n: int, size, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 ``[H, W, 3]`` images of the (augmented) training input."""
    from mobiledet_jax import data

    if n <= 0:
        return []
    batch = min(n, 16)
    it = data.build_train_iterator(data_config, batch, size, _mesh(), seed)
    out = []
    while len(out) < n:
        images = np.asarray(next(it)["image"])
        out += list(_to_uint8(images))
    return out[:n]


def eval_pixels(data_config, split: str, n: int, size) -> list[np.ndarray]:
    """The first ``n`` images of an evaluation split as uint8 ``[H, W, 3]``."""
    from mobiledet_jax import data

    if n <= 0:
        return []
    it = data.build_eval_iterator(data_config, min(n, 16), size, _mesh(), split=split)
    out = []
    for b in it:
        mask = np.asarray(b["example_mask"])
        out += list(_to_uint8(np.asarray(b["image"])[mask]))
        if len(out) >= n:
            break
    return out[:n]


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(tflite_predict.images_to_pixels(images)), 0, 255).astype(np.uint8)


def jax_raw(model, variables, pixels: np.ndarray, head: str = "logits"):
    """JAX outputs for uint8 pixels ``[B, H, W, 3]`` (the same function the file was made from)."""
    fn = jax.jit(convert.serving_function(model, variables, head))
    with jax.default_matmul_precision("float32"):  # full precision on accelerators too
        outs = [fn(jnp.asarray(p[None])) for p in pixels]
    return tuple(np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(2))


def parity(tflite: bytes, model, variables, pixels: list[np.ndarray], head: str) -> dict:
    """Raw outputs of the file vs JAX on the same uint8 pixels."""
    pixels = np.stack(pixels)
    ref = jax_raw(model, variables, pixels, head)
    tfl = tflite_predict.TFLiteModel(tflite)
    outs = [tfl.invoke(p[None]) for p in pixels]
    names = convert.HEADS[head]
    result = {}
    for name, r in zip(names, ref, strict=True):
        stats = report.parity_stats(np.concatenate([o[name] for o in outs]), r)
        quant = tflite_model.quantization(tflite, name)
        if quant is not None:  # express the error in output quantization steps too
            stats["output_step"] = float(quant[0][0])
            stats["max_abs_diff_steps"] = stats["max_abs_diff"] / float(quant[0][0])
        result[name] = stats
    return result


def coco_comparison(tflite: bytes, model, variables, data_config, opts, size) -> dict:
    """COCO metrics of the file and of the JAX model on ``opts.eval_split``."""
    from mobiledet_jax import data
    from mobiledet_jax.evaluate import run_coco_evaluation
    from mobiledet_jax.train_step import make_detect_fn

    mesh = _mesh()
    it = data.build_eval_iterator(
        data_config, opts.eval_batch_size, size, mesh, split=opts.eval_split
    )
    if it.info.num_classes != model.num_classes:
        raise ValueError(
            f"the model has {model.num_classes} classes, split {opts.eval_split!r} has "
            f"{it.info.num_classes}: pass a matching data config (e.g. label_map=coco90)"
        )
    max_batches = -1 if opts.eval_images < 0 else -(-opts.eval_images // opts.eval_batch_size)
    anchors = anchors_lib.anchors_jnp(*size)
    jax_detect = make_detect_fn(model, anchors, mesh)
    m_jax = run_coco_evaluation(lambda b: jax_detect(variables, b), it, it.info, max_batches)
    tfl = tflite_predict.TFLiteModel(tflite)
    m_tfl = run_coco_evaluation(
        tflite_predict.make_detect_fn(tfl, anchors), it, it.info, max_batches
    )
    n = it.info.num_examples if max_batches < 0 else min(it.info.num_examples, opts.eval_images)
    keep = lambda m: {k: float(v) for k, v in m.items() if "/" not in k}
    return {
        "split": opts.eval_split,
        "images": n,
        "jax": keep(m_jax),
        "tflite": keep(m_tfl),
        "ap_drop": float(m_tfl["AP"] - m_jax["AP"]),
    }


def class_names(model_config, data_config) -> list[str]:
    """Label names for the metadata: the dataset's when its class count matches the model's."""
    try:
        from mobiledet_jax.data import sources

        info = sources.open_split(data_config, "val").info
        if len(info.category_names) == model_config.num_classes:
            return [str(n) for n in info.category_names]
    except Exception as e:  # no data available: labels are still required by clients
        logging.warning("no dataset label names (%s); writing class_<i>", e)
    return [f"class_{i}" for i in range(model_config.num_classes)]


def export_model(
    model_config, variables, output: str, opts: ExportOptions, data_config, meta=None
) -> dict:
    """Exports one model; writes the file, anchors (raw) and the report; returns the report."""
    fmt = opts.resolved_format()
    meta = meta or {}
    model = build_model(model_config)
    size = input_size(model_config)
    head = "scores" if opts.outputs == "postprocessed" else "logits"
    # int8 of a QAT checkpoint (config.train.qat): its trained quant_stats, not PTQ
    quant_stats = variables.get("quant_stats") if fmt == "int8" else None
    quantization = None if fmt != "int8" else ("qat" if quant_stats else "ptq")
    t0 = time.time()
    rep_pixels = (
        training_pixels(data_config, opts.representative_images, size, opts.seed)
        if quantization == "ptq"
        else None
    )
    t1 = time.time()
    if quantization == "qat":
        from mobiledet_jax.export import qat

        body = qat.convert(model, variables, quant_stats, size, head)
    else:
        body = convert.convert(
            model, variables, size, fmt, head, rep_pixels, opts.float_input, opts.saved_model_dir
        )
    fused = convert.check_fused(body, convert.count_convs(variables))
    t2 = time.time()
    par_pixels = eval_pixels(data_config, opts.eval_split, opts.parity_images, size)
    parity_outputs = parity(body, model, variables, par_pixels, head) if par_pixels else {}
    anchors = anchors_lib.anchors_for_image(*size)
    nms = postprocess_op.NmsConfig(use_regular_nms=not opts.fast_nms)
    final = body
    if opts.outputs == "postprocessed":
        final = postprocess_op.append_postprocess(body, anchors, model_config.num_classes, nms)
    labels = metadata.label_lines(class_names(model_config, data_config), head == "logits")
    md = metadata.build_metadata(
        opts.outputs,
        f"SSDLite {model_config.name} ({fmt})",
        f"SSDLite + {model_config.name}, {size[0]}x{size[1]}, exported by mobiledet_jax",
        version=str(meta.get("step", "")),
        uint8_input=not opts.float_input,
    )
    final = metadata.attach(final, md, labels)
    out = pathlib.Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(final)
    if opts.outputs == "raw":
        np.save(out.with_name(out.name + ".anchors.npy"), anchors)
    pre = None
    if opts.target in preflight.TARGETS:
        result = preflight.check(final, opts.target)
        pre = {**result.to_dict(), "table": result.table()}
    coco = None
    if opts.eval_images != 0:
        try:
            coco = coco_comparison(final, model, variables, data_config, opts, size)
        except (ImportError, AttributeError, ValueError) as e:  # no library, or classes differ
            logging.warning("COCO comparison skipped: %s", e)
            coco = {"split": opts.eval_split, "images": 0, "error": str(e)}
    latency = None
    if opts.latency_runs > 0:
        latency = {
            "median_ms": tflite_predict.latency_ms(final, runs=opts.latency_runs),
            "runs": opts.latency_runs,
            "warmup": 5,
            "threads": 1,
            "xnnpack": True,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        }
    inputs, outputs = tflite_model.io_tensors(final)
    r = {
        "model": {
            "name": model_config.name,
            "num_classes": int(model_config.num_classes),
            "image_size": list(size),
            "checkpoint_step": meta.get("step"),
            "source": meta.get("source", ""),
            "num_params": int(
                sum(
                    np.size(x)
                    for x in jax.tree.leaves([variables["params"], variables["batch_stats"]])
                )
            ),
        },
        "export": {
            "file": str(out),
            "target": opts.target,
            "format": fmt,
            "quantization": quantization,  # int8: "ptq" or "qat" (the checkpoint's quant_stats)
            "outputs": opts.outputs,
            "nms": dataclasses.asdict(nms) if opts.outputs == "postprocessed" else None,
            "size_bytes": len(final),
            "input": _tensor_dict(inputs[0], tflite_model.quantization(final, inputs[0].name)),
            "output_tensors": [_tensor_dict(t) for t in outputs],
            "anchors_file": str(out.with_name(out.name + ".anchors.npy"))
            if opts.outputs == "raw"
            else None,
        },
        "ops": {
            "counts": tflite_model.op_counts(final),
            "fused": fused["conv_activations"],
            "total": len(tflite_model.list_ops(final)),
            "convs": fused["convs"],
        },
        "preflight": pre,
        "parity": {
            "images": len(par_pixels),
            "source": opts.eval_split,
            "outputs": parity_outputs,
            "note": "outputs before post-processing; class_scores = sigmoid(class_logits)"
            if head == "scores"
            else "",
        },
        "coco": coco,
        "latency": latency,
        "timing": {"representative_s": t1 - t0, "convert_s": t2 - t1, "total_s": time.time() - t0},
        "versions": _versions(),
    }
    report.write(r, out)
    return r


def _tensor_dict(t, quant=None) -> dict:
    d = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
    if quant is not None:
        d["quantization"] = {"scale": float(quant[0][0]), "zero_point": int(quant[1][0])}
    return d


def _versions() -> dict:
    import importlib.metadata as im

    out = {}
    for pkg in ("jax", "tensorflow-cpu", "ai-edge-litert"):
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            pass
    return out


def export_checkpoint(
    workdir: str, output: str, opts: ExportOptions, step: int | None = None, data_config=None
) -> dict:
    """Restores ``<workdir>/checkpoints/<step>`` (default: latest) and exports it."""
    from mobiledet_jax import checkpoints, data

    variables, meta = checkpoints.load_model(workdir, step)
    model_config = checkpoints.model_config_from_meta(meta)
    if data_config is None:
        data_config = _workdir_data_config(workdir) or data.data_config()
    if step is None:
        step = checkpoints.latest_step(workdir)
    return export_model(model_config, variables, output, opts, data_config, {"step": step, **meta})


def _workdir_data_config(workdir: str):
    try:
        from mobiledet_jax.evaluate import load_workdir_config

        config = load_workdir_config(workdir)
        return None if config is None else config.data
    except (ImportError, AttributeError):
        return None
