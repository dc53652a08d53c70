"""The export report: one JSON (machine-readable) and one markdown file beside every .tflite.

``<file>.report.json`` holds everything; ``<file>.report.md`` is the same for people: model and
checkpoint, file and sizes, where the label names and the int8 calibration images came from, op
counts (with fused activations), the preflight table, parity of the raw outputs against JAX, COCO
mAP of the TFLite model vs the JAX model with the file's best-F1 score thresholds (overall and per
class), latency, the bundle files and how to run the file (pycoral, MediaPipe, Frigate).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import platform
from typing import Any

import jax
import numpy as np

from mobiledet_jax import atomic_files
from mobiledet_jax.export import bundle as bundle_lib
from mobiledet_jax.tflite import flatbuffer


def parity_stats(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """max/mean |ours - ref| and the relative figure ``max / max(1, max|ref|)``."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape {ours.shape} vs reference {ref.shape}")
    diff = np.abs(ours - ref)
    scale = max(1.0, float(np.max(np.abs(ref))))
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_ref": float(np.max(np.abs(ref))),
        "relative": float(diff.max() / scale),
    }


def assemble(
    *,
    model_config,
    image_size: tuple[int, int],
    variables,
    meta: dict,
    opts,
    fmt: str,
    quantization: str | None,
    nms: dict | None,
    final: bytes,
    out: pathlib.Path,
    fused: dict,
    preflight: dict | None,
    parity: dict,
    coco: dict | None,
    latency: dict | None,
    timing: dict,
    labels: dict | None = None,
    calibration: dict | None = None,
    bundle: dict | None = None,
) -> dict[str, Any]:
    """The report of one export as a JSON-able dict (``write`` stores it)."""
    inputs, outputs = flatbuffer.io_tensors(final)
    anchors_file = out.with_name(out.name + ".anchors.npy") if opts.outputs == "raw" else None
    if latency is not None:
        latency = {
            **latency,
            "runs": opts.latency_runs,
            "warmup": 5,
            "threads": 1,
            "xnnpack": True,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        }
    weights = jax.tree.leaves([variables["params"], variables["batch_stats"]])
    return {
        "model": {
            "name": model_config.name,
            "num_classes": int(model_config.num_classes),
            "image_size": list(image_size),
            "checkpoint_step": meta.get("step"),
            "source": meta.get("source", ""),
            "num_params": int(sum(np.size(x) for x in weights)),
        },
        "export": {
            "file": str(out),
            "target": opts.target,
            "format": fmt,
            "quantization": quantization,  # int8: "ptq" or "qat" (the checkpoint's quant_stats)
            "outputs": opts.outputs,
            "nms": nms,
            "size_bytes": len(final),
            "input": _tensor_dict(inputs[0], flatbuffer.quantization(final, inputs[0].name)),
            "output_tensors": [_tensor_dict(t) for t in outputs],
            "anchors_file": str(anchors_file) if anchors_file else None,
        },
        "labels": labels,  # {"source", "names"}: the metadata's and the labels file's names
        "calibration": calibration,  # int8: {"source", "kind", "images", ...}; None for floats
        "bundle": bundle or None,  # post-processed: {"labels_file", "frigate_file"}
        "ops": {
            "counts": flatbuffer.op_counts(final),
            "fused": fused["conv_activations"],
            "total": len(flatbuffer.list_ops(final)),
            "convs": fused["convs"],
        },
        "preflight": preflight,
        "parity": {
            "images": parity["images"],
            "source": parity.get("source", opts.eval_split),
            "outputs": parity["outputs"],
            "reference": parity.get("reference", "float JAX model"),
            "note": "outputs before post-processing; class_scores = sigmoid(class_logits)"
            if parity["head"] == "scores"
            else "",
        },
        "coco": coco,
        "latency": latency,
        "timing": timing,
        "versions": _versions(),
    }


def _tensor_dict(t, quant=None) -> dict:
    d = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
    if quant is not None:
        d["quantization"] = {"scale": float(quant[0][0]), "zero_point": int(quant[1][0])}
    return d


def _versions() -> dict:
    out = {}
    for pkg in ("jax", "tensorflow-cpu", "ai-edge-litert"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def paths(output: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(output)
    return out.with_name(out.name + ".report.json"), out.with_name(out.name + ".report.md")


def write(report: dict[str, Any], output: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes ``<output>.report.json`` and ``<output>.report.md``; returns both paths."""
    json_path, md_path = paths(output)
    text = json.dumps(report, indent=1, sort_keys=False, default=_jsonable)
    atomic_files.write_text(json_path, text)  # whole or not at all, as every file kept
    atomic_files.write_text(md_path, markdown(report))
    return json_path, md_path


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _fmt(x, digits=4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def markdown(r: dict[str, Any]) -> str:
    m, e = r["model"], r["export"]
    lines = [
        f"# Export report: {pathlib.Path(e['file']).name}",
        "",
        f"- model: `{m['name']}`, {m['num_classes']} classes, input {m['image_size'][0]}x"
        f"{m['image_size'][1]}, checkpoint step {m['checkpoint_step']} ({m.get('source') or 'workdir'})",
        f"- target `{e['target']}`, format `{e['format']}`"
        + (f" ({e['quantization'].upper()})" if e.get("quantization") else "")
        + f", outputs `{e['outputs']}`"
        + (f", NMS: {e['nms']}" if e.get("nms") else ""),
        f"- file size {e['size_bytes'] / 1e6:.3f} MB (params: {m['num_params']:,}; "
        f"float32 weights would be {4 * m['num_params'] / 1e6:.3f} MB)",
        f"- input `{e['input']['name']}` {e['input']['dtype']} {e['input']['shape']}"
        f" (quantization {e['input'].get('quantization')}); normalization 2/255*x-1 in the graph",
        "- outputs: "
        + ", ".join(f"`{o['name']}` {o['dtype']} {o['shape']}" for o in e["output_tensors"]),
        f"- conversion took {r.get('timing', {}).get('convert_s', 0):.1f} s; versions: "
        + ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items()),
        "",
        "## Ops",
        "",
    ]
    lines[-3:-3] = _inputs_lines(r)
    ops = r["ops"]
    lines += _table(["op", "count"], [[k, v] for k, v in ops["counts"].items()])
    lines += ["", f"Total {ops['total']}; fused activations: {ops['fused']}", ""]
    pre = r.get("preflight")
    if pre:
        lines += [f"## Preflight ({pre['target']}): {'OK' if pre['ok'] else 'FAIL'}", "", "```"]
        lines += [pre["table"], "```", ""]
    par = r.get("parity")
    if par:
        ref = par.get("reference", "float JAX model")
        lines += [f"## Parity with the {ref} ({par['images']} images from `{par['source']}`)", ""]
        rows = [
            [k, v["max_abs_diff"], v["mean_abs_diff"], v["max_abs_ref"], v["relative"],
             v.get("within_one_step", "-")]
            for k, v in par["outputs"].items()
        ]  # fmt: skip
        lines += _table(
            ["output", "max abs diff", "mean abs diff", "max abs ref", "relative",
             "within one output step"], rows
        )  # fmt: skip
        lines += ["", par.get("note", ""), ""]
    coco = r.get("coco")
    if coco:
        lines += [f"## COCO on `{coco['split']}` ({coco['images']} images)", ""]
        if coco.get("reference"):
            lines += [f"JAX row: the {coco['reference']}", ""]
        if coco.get("error"):
            lines += [f"not computed: {coco['error']}", ""]
        else:
            keys = ["AP", "AP50", "AP75", "AR100"]
            rows = [[name, *(coco[name].get(k) for k in keys)] for name in ("jax", "tflite")]
            lines += _table(["model", *keys], rows)
            lines += ["", f"TFLite - JAX AP: {_fmt(coco['ap_drop'])}", ""]
            lines += _threshold_lines(coco.get("best_f1"))
    lat = r.get("latency")
    if lat:
        lines += [
            "## Latency",
            "",
            f"{_fmt(lat['median_ms'], 3)} ms median of {lat['runs']} invokes after {lat['warmup']} "
            f"warm-up, batch 1, {lat['threads']} thread, ai-edge-litert "
            f"({'XNNPACK' if lat['xnnpack'] else 'builtin kernels'}) on {lat['machine']}",
            "",
        ]
    if r.get("bundle"):
        b = r["bundle"]
        lines += ["## Bundle", "", f"- labels: `{b['labels_file']}` (one name per line)"]
        lines += [f"- Frigate: `{b['frigate_file']}` (detector and model blocks)", ""]
    lines += bundle_lib.usage(r)
    return "\n".join(lines)


def _inputs_lines(r: dict[str, Any]) -> list[str]:
    """The report lines on where the label names and the calibration images came from."""
    lines = []
    lab = r.get("labels")
    if lab:
        names = lab["names"]
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} names)" if len(names) > 8 else "")
        lines.append(f"- labels from {lab['source']}: {shown}")
    cal = r.get("calibration")
    if cal:
        count = f"{cal['images']} images" if "images" in cal else "no images"
        extra = f" of {cal['found']} found" if cal.get("found", 0) > cal.get("images", 0) else ""
        skipped = f"; skipped unreadable: {cal['skipped']}" if cal.get("skipped") else ""
        lines.append(f"- int8 calibration: {count}{extra} from {cal['source']}{skipped}")
    return lines


def _threshold_lines(best: dict | None, max_classes: int = 30) -> list[str]:
    """The best-F1 score thresholds at IoU 0.5 (what Coral and Frigate users set)."""
    if not best:
        return []
    o = best["overall"]
    lines = [
        "### Score threshold (best F1 at IoU 0.5, TFLite file)",
        "",
        f"All classes: **{o['threshold']:.3f}** (F1 {o['f1']:.3f}, precision "
        f"{o['precision']:.3f}, recall {o['recall']:.3f})",
        "",
    ]
    rows = [[n, b["threshold"], b["f1"], b["precision"], b["recall"]]
            for n, b in list(best["per_class"].items())[:max_classes]]  # fmt: skip
    if rows:
        lines += _table(["class", "threshold", "F1", "precision", "recall"], rows) + [""]
    return lines
