"""``mobiledet <command> [flags]``: one entry point for every command (installed as a console
script by ``pip install -e .``); every ``python -m mobiledet_jax.<module>`` form keeps working.

    mobiledet train --config=configs/quickstart.py --workdir=runs/quickstart
    mobiledet export --workdir=runs/quickstart --target=edgetpu --output=model.tflite
    mobiledet launch run ...          # python -m launch.tpu
"""

from __future__ import annotations

import runpy
import sys

# command -> (module run as __main__, one line of help)
COMMANDS = {
    "train": ("mobiledet_jax.train", "train (and evaluate) a config in a workdir"),
    "evaluate": ("mobiledet_jax.evaluate", "COCO metrics of a checkpoint or a .tflite file"),
    "export": ("mobiledet_jax.export", "checkpoint -> .tflite with report and bundle"),
    "predict": ("mobiledet_jax.predict", "run a model on images or a video, draw the boxes"),
    "import-tf1": ("mobiledet_jax.import_tf1", "import a TF1 OD API MobileDet checkpoint"),
    "validate-data": ("mobiledet_jax.validate_data", "check a dataset before training"),
    "browse-data": ("mobiledet_jax.browse_data", "mosaics of batches as the model sees them"),
    "convert-data": ("mobiledet_jax.convert_data", "YOLO / VOC / TF OD API records -> COCO JSON"),
    "summary": ("mobiledet_jax.summary", "per-layer parameters and MAdds, block diagram"),
    "aot-compile": ("mobiledet_jax.aot_compile", "compile the train step for a TPU slice"),
    "preflight": ("mobiledet_jax.preflight", "EdgeTPU / DSP delegate rules on a .tflite file"),
    "latency-table": ("mobiledet_jax.latency_table", "a search space's latency table (cost model)"),
    "search": ("mobiledet_jax.search", "search an architecture for a device (TuNAS-style)"),
    "launch": ("launch.tpu", "from this machine to a Cloud TPU slice and back"),
}


def usage() -> str:
    lines = ["usage: mobiledet <command> [flags]   (mobiledet <command> --help for its flags)", ""]
    lines += [f"  {name:<14s} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0)
    name = argv[0].replace("_", "-")
    if name not in COMMANDS:
        print(f"mobiledet: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = COMMANDS[name][0]
    sys.argv = [f"mobiledet {name}", *argv[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
