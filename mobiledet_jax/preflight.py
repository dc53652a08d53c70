"""EdgeTPU / DSP preflight of a .tflite file (see ``mobiledet_jax.export.delegate_rules``).

    python -m mobiledet_jax.preflight <file.tflite> --target=edgetpu|dsp [--json]

Prints an ``edgetpu_compiler -s``-style table. Exit status 1 when an op of the backbone or head
would not run on the accelerator (post-processing always runs on the CPU), 2 on a bad file.
"""

import argparse
import json
import pathlib
import sys

from mobiledet_jax.export import delegate_rules


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobiledet_jax.preflight")
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("--target", choices=delegate_rules.TARGETS, required=True)
    parser.add_argument("--runtime_version", type=int, default=14, help="EdgeTPU runtime")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead")
    args = parser.parse_args(argv)
    try:
        data = pathlib.Path(args.model).read_bytes()
        result = delegate_rules.check(data, args.target, args.runtime_version)
    except (OSError, ValueError) as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.table())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
