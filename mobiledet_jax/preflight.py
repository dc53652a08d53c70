"""EdgeTPU / DSP preflight of a .tflite file (see ``mobiledet_jax.export.delegate_rules``).

    python -m mobiledet_jax.preflight --model=<file.tflite> --target=edgetpu|dsp [--symmetric]
        [--json=<path>|-]

(the file may also be the first argument, as before; a bare ``--json`` prints the JSON instead of
the table).

Prints an ``edgetpu_compiler -s``-style table. Exit status 1 when an op of the backbone or head
would not run on the accelerator (post-processing always runs on the CPU), 2 on a bad file.
``--symmetric`` also requires symmetric int8 (zero-point-0 activations, per-tensor weights), as
delegates that take only that do.
"""

import argparse
import pathlib
import sys

from mobiledet_jax import command_line
from mobiledet_jax.export import delegate_rules


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobiledet_jax.preflight")
    parser.add_argument("model", nargs="?", help="the .tflite file (or --model)")
    parser.add_argument("--model", dest="model_flag", help="the .tflite file")
    parser.add_argument("--target", choices=delegate_rules.TARGETS, required=True)
    parser.add_argument("--runtime_version", type=int, default=14, help="EdgeTPU runtime")
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="also require zero-point-0 int8 activations and per-tensor weights",
    )
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, help="write the JSON result here (- stdout)"
    )
    args = parser.parse_args(argv)
    model = args.model_flag or args.model
    if not model:
        parser.error("the .tflite file is required (--model=<file> or as the first argument)")
    try:
        data = pathlib.Path(model).read_bytes()
        result = delegate_rules.check(data, args.target, args.runtime_version, args.symmetric)
    except (OSError, ValueError) as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 2
    command_line.write_json(args.json, result.to_dict())
    if args.json != "-":
        print(result.table())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
