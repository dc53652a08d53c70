"""Checkpoint -> .tflite + report: the library behind ``python -m mobiledet_jax.export``.

Steps, in order:

1. restore the checkpoint (``workdir.load_model``, which says which step it loaded);
2. int8 post-training quantization: draw the representative images from the training input as
   pixels (``config.export.representative_images``);
3. convert (``convert``; int8 of a QAT checkpoint, one with ``quant_stats``, goes through
   ``qat_convert`` with its trained ranges instead of post-training quantization);
4. open the evaluation split **once**, as [0, 255] pixels (the file's input): its label names go
   into the metadata, its first images give the raw-output parity against JAX, and the whole split
   the COCO comparison of the file and the JAX model (JAX normalizes the same pixels inside its
   jitted detect function, so no image is normalized and turned back into pixels);
5. append ``TFLite_Detection_PostProcess`` (``outputs="postprocessed"``) and the metadata, run the
   delegate rules of the target (EdgeTPU / DSP), measure latency, write the file, the anchors (raw
   outputs) and the report (``report``).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobiledet_jax import config as config_lib
from mobiledet_jax import data
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.detection import postprocess
from mobiledet_jax.evaluation.evaluator import jax_detect_fn, run_coco_evaluation
from mobiledet_jax.export import convert, delegate_rules, metadata, postprocess_op, report
from mobiledet_jax.models import build_model, input_size
from mobiledet_jax.sharding import host_mesh
from mobiledet_jax.tflite import flatbuffer, runtime

TARGET_FORMATS = {"cpu": "float32", "gpu": "float16", "edgetpu": "int8", "dsp": "int8"}
OUTPUTS = ("raw", "postprocessed")


@dataclasses.dataclass
class ExportOptions:
    """``config.export`` as a value (the export command's flags override fields)."""

    target: str = "cpu"
    format: str | None = None  # None: the target's preset
    outputs: str = "postprocessed"
    representative_images: int = 64
    parity_images: int = 8
    eval_split: str = "val"
    eval_images: int = -1  # -1 all of the split, 0 skip
    eval_batch_size: int = 16
    latency_runs: int = 50  # 0 skips the latency measurement
    fast_nms: bool = False
    float_input: bool = False
    edgetpu_runtime_version: int = 14
    saved_model_dir: str | None = None
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, **overrides) -> ExportOptions:
        """Options from ``config.export``; ``overrides`` that are not None replace fields."""
        values = {f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg}
        values["format"] = values.get("format") or None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolved_format(self) -> str:
        if self.target not in TARGET_FORMATS:
            raise ValueError(f"target must be one of {sorted(TARGET_FORMATS)}, got {self.target!r}")
        if self.outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {self.outputs!r}")
        return self.format or TARGET_FORMATS[self.target]


def _uint8(images) -> np.ndarray:
    """Float pixels as a camera delivers them: rounded uint8 (what a uint8 file takes)."""
    return np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)


def training_pixels(data_config, n: int, size, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 ``[H, W, 3]`` images of the (augmented) training input."""
    if n <= 0:
        return []
    it = data.build_train_iterator(data_config, min(n, 16), size, host_mesh(), seed, pixels=True)
    out = []
    while len(out) < n:
        out += list(_uint8(next(it)["image"]))
    return out[:n]


def first_pixels(eval_iterable, n: int) -> list[np.ndarray]:
    """The first ``n`` real (unpadded) images of a pixel evaluation iterable, as uint8."""
    out = []
    for batch in eval_iterable:
        if len(out) >= n:
            break
        out += list(_uint8(np.asarray(batch["image"])[np.asarray(batch["example_mask"])]))
    return out[:n]


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
    tfl = runtime.TFLiteModel(tflite)
    outs = [tfl.invoke(p[None]) for p in pixels]
    result = {}
    for name, r in zip(convert.HEADS[head], ref, strict=True):
        stats = report.parity_stats(np.concatenate([o[name] for o in outs]), r)
        quant = flatbuffer.quantization(tflite, name)
        if quant is not None:  # express the error in output quantization steps too
            stats["output_step"] = float(quant[0][0])
            stats["max_abs_diff_steps"] = stats["max_abs_diff"] / float(quant[0][0])
        result[name] = stats
    return result


def coco_comparison(tflite: bytes, model, variables, eval_iterable, opts, anchors, nms) -> dict:
    """COCO metrics of the file and of the JAX model on the same pixel batches."""
    info = eval_iterable.info
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"the model has {model.num_classes} classes, split {opts.eval_split!r} has "
            f"{info.num_classes}: pass a matching data config (e.g. label_map=coco90)"
        )
    per_batch = eval_iterable.global_batch_size
    max_batches = -1 if opts.eval_images < 0 else -(-opts.eval_images // per_batch)
    detect = jax_detect_fn(model, anchors, host_mesh(), nms, pixels=True)
    m_jax = run_coco_evaluation(lambda b: detect(variables, b), eval_iterable, info, max_batches)
    tfl_detect = runtime.tflite_detect_fn(runtime.TFLiteModel(tflite), anchors, nms)
    m_tfl = run_coco_evaluation(tfl_detect, eval_iterable, info, max_batches)
    n = info.num_examples if max_batches < 0 else min(info.num_examples, opts.eval_images)
    keep = lambda m: {k: float(v) for k, v in m.items() if "/" not in k}
    return {
        "split": opts.eval_split,
        "images": n,
        "jax": keep(m_jax),
        "tflite": keep(m_tfl),
        "ap_drop": float(m_tfl["AP"] - m_jax["AP"]),
    }


def _class_names(model_config, info) -> list[str]:
    """Label names for the metadata: the split's when its class count matches the model's."""
    if info is not None and len(info.category_names) == model_config.num_classes:
        return [str(n) for n in info.category_names]
    logging.warning(
        "no dataset label names for %d classes; writing class_<i>", model_config.num_classes
    )
    return [f"class_{i}" for i in range(model_config.num_classes)]


def export_model(
    model_config,
    variables,
    output: str,
    opts: ExportOptions,
    data_config,
    meta=None,
    detection_config: ml_collections.ConfigDict | None = None,
) -> dict:
    """Exports one model; writes the file, anchors (raw) and the report; returns the report."""
    fmt = opts.resolved_format()
    meta = meta or {}
    detection_config = detection_config or config_lib.detection_config()
    model = build_model(model_config, detection_config.anchors)
    size = input_size(model_config)
    head = "scores" if opts.outputs == "postprocessed" else "logits"
    # int8 of a QAT checkpoint (config.train.qat): its trained quant_stats, not PTQ
    quant_stats = variables.get("quant_stats") if fmt == "int8" else None
    quantization = None if fmt != "int8" else ("qat" if quant_stats else "ptq")
    t0 = time.time()
    rep_pixels = None
    if quantization == "ptq":
        rep_pixels = training_pixels(data_config, opts.representative_images, size, opts.seed)
    t1 = time.time()
    if quantization == "qat":
        from mobiledet_jax.export import qat_convert

        body = qat_convert.convert(model, variables, quant_stats, size, head)
    else:
        body = convert.convert(
            model, variables, size, fmt, head, rep_pixels, opts.float_input, opts.saved_model_dir
        )
    fused = convert.check_fused(body, convert.count_convs(variables))
    t2 = time.time()
    eval_iterable = None  # the evaluation split, opened once for labels, parity and COCO
    if opts.parity_images > 0 or opts.eval_images != 0:
        eval_iterable = data.build_eval_iterator(
            data_config, opts.eval_batch_size, size, host_mesh(), split=opts.eval_split, pixels=True
        )
    par_pixels = first_pixels(eval_iterable, opts.parity_images) if eval_iterable else []
    parity_outputs = parity(body, model, variables, par_pixels, head) if par_pixels else {}
    anchor_settings = anchors_lib.AnchorSettings.from_config(detection_config.anchors)
    anchors = anchors_lib.anchors_for_image(*size, anchor_settings)
    nms = postprocess.NmsSettings.from_config(detection_config.nms)
    op_nms = postprocess_op.NmsConfig.from_settings(nms, use_regular_nms=not opts.fast_nms)
    final = body
    if opts.outputs == "postprocessed":
        final = postprocess_op.append_postprocess(body, anchors, model_config.num_classes, op_nms)
    info = eval_iterable.info if eval_iterable else None
    labels = metadata.label_lines(_class_names(model_config, info), head == "logits")
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
    if opts.target in delegate_rules.TARGETS:
        result = delegate_rules.check(final, opts.target, opts.edgetpu_runtime_version)
        pre = {**result.to_dict(), "table": result.table()}
    coco = None
    if opts.eval_images != 0:
        try:
            coco = coco_comparison(final, model, variables, eval_iterable, opts, anchors, nms)
        except ValueError as e:  # the split's classes are not the model's
            logging.warning("COCO comparison skipped: %s", e)
            coco = {"split": opts.eval_split, "images": 0, "error": str(e)}
    latency = None
    if opts.latency_runs > 0:
        latency = {"median_ms": runtime.latency_ms(final, runs=opts.latency_runs)}
    r = report.assemble(
        model_config=model_config,
        image_size=size,
        variables=variables,
        meta=meta,
        opts=opts,
        fmt=fmt,
        quantization=quantization,
        nms=dataclasses.asdict(op_nms) if opts.outputs == "postprocessed" else None,
        final=final,
        out=out,
        fused=fused,
        preflight=pre,
        parity={"images": len(par_pixels), "outputs": parity_outputs, "head": head},
        coco=coco,
        latency=latency,
        timing={"representative_s": t1 - t0, "convert_s": t2 - t1, "total_s": time.time() - t0},
    )
    report.write(r, out)
    return r


def export_checkpoint(
    workdir: str,
    output: str,
    opts: ExportOptions,
    step: int | None = None,
    data_config=None,
    detection_config=None,
) -> dict:
    """Restores ``<workdir>/checkpoints/<step>`` (default: latest) and exports it; the data and
    detection settings default to the workdir's saved config (else the defaults)."""
    loaded = workdir_lib.load_model(workdir, step)
    model_config = workdir_lib.model_config_from_meta(loaded.meta)
    saved = workdir_lib.load_config(workdir) or config_lib.base_config()
    data_config = data_config or saved.data
    detection_config = detection_config or saved.detection
    meta = {**loaded.meta, "step": loaded.step}
    return export_model(
        model_config, loaded.variables, output, opts, data_config, meta, detection_config
    )
