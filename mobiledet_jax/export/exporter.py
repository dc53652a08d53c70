"""Checkpoint -> .tflite + report + deployment bundle: the library behind
``python -m mobiledet_jax.export``.

Steps, in order:

1. restore the checkpoint (``workdir.load_model``: ``"latest"``, ``"best"`` or a step);
2. resolve what the export reads besides it (``inputs``), before converting anything: the label
   names (``--labels``, the workdir's ``labels.txt``, the data config's categories), the int8
   calibration images (``--calibration_images`` or the data config's training input) and the
   evaluation split, opened **once** as [0, 255] pixels; a data config whose classes are not the
   model's is an error wherever it would calibrate or score it;
3. convert (``convert``; int8 of a QAT checkpoint, one with ``quant_stats``, goes through
   ``qat_convert`` with its trained ranges instead of post-training quantization);
4. the raw-output parity against JAX (first evaluation images, else calibration images), then
   ``TFLite_Detection_PostProcess`` (``outputs="postprocessed"``) and the metadata (labels,
   normalization), the delegate rules of the target (EdgeTPU / DSP), the COCO comparison of the
   file and the JAX model on the same pixel batches with the file's best-F1 score thresholds
   (``evaluation.curves``), latency;
5. write the file, the anchors (raw outputs), the bundle of a post-processed file
   (``<file>.labels.txt``, ``<file>.frigate.yml``; ``bundle``) and the report (``report``).
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobiledet_jax import atomic_files
from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.detection import postprocess
from mobiledet_jax.evaluation import curves
from mobiledet_jax.evaluation.evaluator import jax_detect_fn, run_coco_evaluation, run_evaluation
from mobiledet_jax.export import (
    bundle,
    convert,
    delegate_rules,
    inputs,
    int8_kernels,
    metadata,
    postprocess_op,
    report,
)
from mobiledet_jax.models import build_model, input_size, preprocess
from mobiledet_jax.progress import Progress, format_duration
from mobiledet_jax.sharding import host_mesh
from mobiledet_jax.tflite import flatbuffer, runtime

TARGET_FORMATS = {"cpu": "float32", "gpu": "float16", "edgetpu": "int8", "dsp": "int8"}
OUTPUTS = ("raw", "postprocessed")
# --preset: fields it sets; a flag asking for another value is an error. Frigate's EdgeTPU
# detector takes a full-int8 file with uint8 input and the four outputs of the NMS op.
PRESETS = {
    "frigate": {"target": "edgetpu", "format": "int8", "outputs": "postprocessed",
                "float_input": False},
}  # fmt: skip


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
    labels: str = ""  # a label file ("" = the workdir's labels.txt, else the data config's)
    calibration_images: str = ""  # folder or glob of raw images for int8 calibration
    preset: str = ""  # "frigate" (PRESETS)
    int8_hard_swish: str = "mul_add"  # or "op": the converter's HARD_SWISH (int8_kernels)
    int8_global_pool: str = "mean"  # or "avg_pool": the converter's AVERAGE_POOL_2D
    int8_scheme: str = ""  # "" = config.model.int8_scheme; "asymmetric" or "symmetric"

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, **overrides) -> ExportOptions:
        """Options from ``config.export``; ``overrides`` that are not None replace fields (the
        command's flags), then the preset's fields; an override that contradicts the preset is a
        ValueError."""
        values = {f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg}
        values["format"] = values.get("format") or None
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        preset = values.get("preset") or ""
        if preset and preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        for name, value in PRESETS.get(preset, {}).items():
            if name in given and given[name] != value:
                raise ValueError(
                    f"--preset={preset} exports {name}={value} (what its runtime takes); "
                    f"drop --{name}={given[name]} or the preset"
                )
            values[name] = value
        return cls(**values)

    def resolved_format(self) -> str:
        if self.target not in TARGET_FORMATS:
            raise ValueError(f"target must be one of {sorted(TARGET_FORMATS)}, got {self.target!r}")
        if self.outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {self.outputs!r}")
        int8_kernels.check_modes(self.int8_hard_swish, self.int8_global_pool)
        return self.format or TARGET_FORMATS[self.target]


def jax_raw(model, variables, pixels: np.ndarray, head: str = "logits", normalize=preprocess):
    """JAX outputs for uint8 pixels ``[B, H, W, 3]`` (the same function the file was made from)."""
    fn = jax.jit(convert.serving_function(model, variables, head, normalize))
    with jax.default_matmul_precision("float32"):  # full precision on accelerators too
        outs = [fn(jnp.asarray(p[None])) for p in pixels]
    return tuple(np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(2))


def parity(
    tflite: bytes, model, variables, pixels: list[np.ndarray], head: str, normalize=preprocess
) -> dict:
    """Raw outputs of the file vs JAX on the same uint8 pixels."""
    pixels = np.stack(pixels)
    ref = jax_raw(model, variables, pixels, head, normalize)
    tfl = runtime.TFLiteModel(tflite)
    outs = [tfl.invoke(p[None]) for p in pixels]
    result = {}
    for name, r in zip(convert.HEADS[head], ref, strict=True):
        got = np.concatenate([o[name] for o in outs])
        stats = report.parity_stats(got, r)
        quant = flatbuffer.quantization(tflite, name)
        if quant is not None:  # express the error in output quantization steps too
            step = float(quant[0][0])
            stats["output_step"] = step
            stats["max_abs_diff_steps"] = stats["max_abs_diff"] / step
            # half a step of float slack: the file's outputs are on the step grid, JAX's nearly
            diff = np.abs(np.asarray(got, np.float64) - np.asarray(r, np.float64))
            stats["within_one_step"] = float(np.mean(diff <= step * (1 + 1e-4)))
        result[name] = stats
    return result


def coco_comparison(
    tflite: bytes, model, variables, eval_iterable, opts, anchors, nms, normalize=preprocess
) -> dict:
    """COCO metrics of the file and of the JAX model on the same pixel batches, and the file's
    best-F1 score thresholds at IoU 0.5 (overall and per class: Coral / Frigate ``threshold``)."""
    info = eval_iterable.info
    per_batch = eval_iterable.global_batch_size
    max_batches = -1 if opts.eval_images < 0 else -(-opts.eval_images // per_batch)
    detect = jax_detect_fn(model, anchors, host_mesh(), nms, pixels=True, normalize=normalize)
    m_jax = run_coco_evaluation(
        lambda b: detect(variables, b), eval_iterable, info, max_batches, label="eval (JAX)"
    )
    tfl_detect = runtime.tflite_detect_fn(runtime.TFLiteModel(tflite), anchors, nms)
    tfl = run_evaluation(tfl_detect, eval_iterable, info, max_batches, label="eval (TFLite)")
    scored = max_batches * per_batch  # whole batches are scored
    n = info.num_examples if max_batches < 0 else min(info.num_examples, scored)
    keep = lambda m: {k: float(v) for k, v in m.items() if "/" not in k}
    return {
        "split": opts.eval_split,
        "images": n,
        "jax": keep(m_jax),
        "tflite": keep(tfl.metrics),
        "ap_drop": float(tfl.metrics["AP"] - m_jax["AP"]),
        "best_f1": curves.best_f1_thresholds(tfl.coco),
    }


def _convert_body(model, variables, size, fmt: str, head: str, opts, rep_pixels, scheme):
    """The converted network (before post-processing and metadata), the seconds it took and the
    variables it holds (int8 through ``qat_convert``: the conv biases snapped to its grid);
    int8 of a QAT checkpoint (one with ``quant_stats``) through ``qat_convert`` with its trained
    ranges; int8 in the symmetric ``scheme`` through the same path with ranges calibrated on
    ``rep_pixels`` (``symmetric_ptq_stats``); else ``convert`` (int8: TFLiteConverter's
    post-training quantization calibrated on ``rep_pixels``)."""
    quant_stats = variables.get("quant_stats") if fmt == "int8" else None
    t0 = time.time()
    if fmt == "int8" and not quant_stats and scheme == "symmetric":
        from mobiledet_jax.models import qat

        quant_stats = symmetric_ptq_stats(model, variables, rep_pixels)
        variables = qat.fold_batch_norms(model, variables)
    if quant_stats:
        from mobiledet_jax.export import qat_convert
        from mobiledet_jax.models import qat

        # BatchNorm folded into the kernels here, as the converter would fold it (a trained BN
        # scale becomes part of each channel's weight scale): the file then holds the very
        # kernels, scales and biases of the model it is compared with (models.qat_integer)
        variables = qat.fold_batch_norms(model, variables)

        body, variables = qat_convert.convert_snapped(
            model, {**variables, "quant_stats": quant_stats}, quant_stats, size, head,
            opts.int8_hard_swish, opts.int8_global_pool, scheme,
        )  # fmt: skip
    else:
        body = convert.convert(model, variables, size, fmt, head, rep_pixels, opts.float_input,
                               opts.saved_model_dir, opts.int8_hard_swish,
                               opts.int8_global_pool)  # fmt: skip
    return body, time.time() - t0, variables


def symmetric_ptq_stats(model, variables, pixels) -> dict:
    """Post-training ranges in the symmetric scheme: one pass of qwix's fake-quant model
    (``models.qat``, abs-max activation ranges, per-tensor weights of the BN-folded kernels:
    convert ``qat.fold_batch_norms(model, variables)`` with them) over the calibration pixels,
    8 images at a time (qwix's range of a tensor: the mean over images of their abs-max).
    TFLiteConverter has no zero-point-0 activation option, so these files go through the QAT
    converter."""
    from mobiledet_jax.models import preprocess, qat

    qmodel = qat.qat_model(model, scheme="symmetric")
    variables = qat.fold_batch_norms(model, variables)  # per-tensor scales of the folded kernels
    pixels = np.stack(pixels)
    chunks = [pixels[i : i + 8] for i in range(0, len(pixels), 8)]
    stats = [qat.calibrate(qmodel, variables, preprocess(jnp.asarray(c))) for c in chunks]
    # qwix keeps sums over images and their count: the chunks' entries add up
    return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *stats)


def _with_metadata(tflite: bytes, model_config, names, fmt, size, meta, opts) -> bytes:
    """The file with its TFLite metadata (labels, normalization) attached."""
    labels = metadata.label_lines(names, opts.outputs == "raw")
    md = metadata.build_metadata(
        opts.outputs,
        f"SSDLite {model_config.name} ({fmt})",
        f"SSDLite + {model_config.name}, {size[0]}x{size[1]}, exported by mobiledet_jax",
        version=str(meta.get("step", "")),
        uint8_input=not opts.float_input,
    )
    return metadata.attach(tflite, md, labels)


def reference_model(model, variables, quantization, scheme):
    """``(model, variables, normalize, label)``: what the file is compared with (parity, COCO).
    A QAT checkpoint's fake-quant JAX model (the int8 numerics it trained with, ``models.qat``)
    computed in the file's integer arithmetic (``models.qat_integer``: the file should equal it
    value for value), fed the values the file's uint8 input stands for (``qat.file_input``);
    else the float JAX model (post-training quantization: the comparison shows its loss)."""
    if quantization != "qat":
        return model, variables, preprocess, "float JAX model"
    from mobiledet_jax.models import qat, qat_integer

    imodel = qat_integer.integer_model(model, variables, variables["quant_stats"], scheme)
    return imodel, variables, qat.file_input, "fake-quant JAX model (QAT)"


def int8_scheme(model_config, opts, quantization) -> str:
    """The int8 scheme of the file: ``--int8_scheme``, else the model's (``config.model``); a QAT
    checkpoint is converted in the scheme it was trained in (another one is a ValueError)."""
    from mobiledet_jax.models import qat

    trained = model_config.get("int8_scheme", "asymmetric")
    scheme = opts.int8_scheme or trained
    qat.check_scheme(scheme)
    if quantization == "qat" and scheme != trained:
        raise ValueError(
            f"this QAT checkpoint was trained in the {trained!r} int8 scheme; "
            f"--int8_scheme={scheme} would need another QAT run"
        )
    return scheme


def float32_model_config(model_config):
    """``model_config`` computing in float32: a TFLite file's float graph is float32 (and int8 is
    calibrated on float32 activations) whatever the training dtype; ``"auto"`` would trace the
    model in bfloat16 on a TPU host. A copy when it changes; the caller's config is untouched."""
    if model_config.get("compute_dtype", "float32") == "float32":
        return model_config
    model_config = model_config.copy_and_resolve_references()
    model_config.compute_dtype = "float32"  # an existing field: allowed on a locked config
    return model_config


def export_model(
    model_config,
    variables,
    output: str,
    opts: ExportOptions,
    data_config,
    meta=None,
    detection_config: ml_collections.ConfigDict | None = None,
    data_origin: str = "the given data config",
    workdir_names=None,
) -> dict:
    """Exports one model; writes the file, anchors (raw), bundle (post-processed) and report;
    returns the report. ``workdir_names``: ``(names, path)`` of a workdir's label record."""
    fmt = opts.resolved_format()
    meta = meta or {}
    detection_config = detection_config or config_lib.detection_config()
    model_config = float32_model_config(model_config)
    model = build_model(model_config, detection_config.anchors)
    size = input_size(model_config)
    head = "scores" if opts.outputs == "postprocessed" else "logits"
    quantization = None if fmt != "int8" else ("qat" if variables.get("quant_stats") else "ptq")
    scheme = int8_scheme(model_config, opts, quantization)
    t0 = time.time()
    stages = Progress("export", 5, "stage")  # inputs, convert, parity, file, scoring
    stages.update(0, f"{fmt}: labels, calibration and evaluation inputs", line=True)
    got = inputs.resolve(model_config, size, quantization, opts, data_config, data_origin,
                         workdir_names)  # fmt: skip
    t1 = time.time()
    stages.update(1, f"{fmt}: converting (jax2tf -> SavedModel -> TFLite)", line=True)
    body, convert_s, converted = _convert_body(model, variables, size, fmt, head, opts,
                                               got.calibration, scheme)  # fmt: skip
    if quantization == "qat":  # the fake-quant reference holds the file's (snapped) biases
        variables = converted
    fused = convert.check_fused(body, convert.count_convs(variables))
    stages.update(2, f"parity against JAX on {len(got.parity_pixels)} images", line=True)
    ref_model, ref_vars, normalize, reference = reference_model(model, variables, quantization,
                                                                scheme)  # fmt: skip
    par = {}
    if got.parity_pixels:
        par = parity(body, ref_model, ref_vars, got.parity_pixels, head, normalize)
    anchor_settings = anchors_lib.AnchorSettings.from_config(detection_config.anchors)
    anchors = anchors_lib.anchors_for_image(*size, anchor_settings)
    nms = postprocess.NmsSettings.from_config(detection_config.nms)
    op_nms = postprocess_op.NmsConfig.from_settings(nms, use_regular_nms=not opts.fast_nms)
    stages.update(3, "post-processing, metadata, file", line=True)
    final = body
    if opts.outputs == "postprocessed":
        final = postprocess_op.append_postprocess(body, anchors, model_config.num_classes, op_nms)
    final = _with_metadata(final, model_config, got.names, fmt, size, meta, opts)
    out = pathlib.Path(output)
    atomic_files.write_bytes(out, final)  # a killed or failed write keeps the previous file
    if opts.outputs == "raw":
        buffer = io.BytesIO()
        np.save(buffer, anchors)
        atomic_files.write_bytes(out.with_name(out.name + ".anchors.npy"), buffer.getvalue())
    pre = None
    if opts.target in delegate_rules.TARGETS:
        symmetric = opts.target == "dsp" and scheme == "symmetric"
        result = delegate_rules.check(
            final, opts.target, opts.edgetpu_runtime_version, require_symmetric=symmetric
        )
        pre = {**result.to_dict(), "table": result.table()}
    stages.update(4, "scoring the file (COCO, latency)", line=True)
    coco = {"split": opts.eval_split, "images": 0, "error": got.coco_skipped}
    if got.coco_skipped is None:
        coco = coco_comparison(final, ref_model, ref_vars, got.eval_iterable, opts, anchors, nms,
                               normalize)  # fmt: skip
        coco["reference"] = reference
    latency = None
    if opts.latency_runs > 0:
        latency = {"median_ms": runtime.latency_ms(final, runs=opts.latency_runs)}
    files = (
        bundle.write(out, got.names, opts, size, coco) if opts.outputs == "postprocessed" else {}
    )
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
        parity={"images": len(got.parity_pixels), "outputs": par, "head": head,
                "source": got.parity_source, "reference": reference},
        coco=None if opts.eval_images == 0 else coco,
        latency=latency,
        timing={"inputs_s": t1 - t0, "convert_s": convert_s, "total_s": time.time() - t0},
        labels={"source": got.labels_source, "names": got.names},
        calibration=got.calibration_info,
        bundle=files,
    )  # fmt: skip
    report.write(r, out)
    stages.update(5)
    stages.close(f"{out} in {format_duration(time.time() - t0)}")
    return r


def export_checkpoint(
    workdir: str,
    output: str,
    opts: ExportOptions,
    step: int | str | None = None,
    data_config=None,
    detection_config=None,
    data_origin: str | None = None,
) -> dict:
    """Restores ``<workdir>``'s checkpoint ``step`` (``"latest"`` by default, ``"best"`` or a
    number) and exports it; the data and detection settings default to the workdir's saved
    config (else the defaults, ``inputs.DEFAULT_ORIGIN``)."""
    loaded = workdir_lib.load_model(workdir, step)
    model_config = workdir_lib.model_config_from_meta(loaded.meta)
    saved = workdir_lib.load_config(workdir)
    if data_origin is None:
        data_origin = "the given data config" if data_config is not None else (
            f"{workdir}/config.json" if saved is not None else inputs.DEFAULT_ORIGIN
        )  # fmt: skip
    saved = saved or config_lib.base_config()
    data_config = data_config or saved.data
    detection_config = detection_config or saved.detection
    meta = {**loaded.meta, "step": loaded.step}
    variables = loaded.variables
    if "quant_stats" in variables and saved.train.get("qat_bn_freeze_delay", 0) > loaded.step:
        from mobiledet_jax.models import qat  # QAT stopped before its BN freeze: fold as it would

        variables = qat.fold_batch_norms(build_model(model_config), variables)
    return export_model(
        model_config, variables, output, opts, data_config, meta, detection_config,
        data_origin, inputs.workdir_label_record(workdir),
    )  # fmt: skip
