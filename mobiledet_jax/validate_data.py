"""Checks a COCO-format detection dataset before training and prints what would be repaired.

    python -m mobiledet_jax.validate_data --annotations=instances.json --images=<folder> [--json]

Every image is decoded and every box checked exactly as preparation for training does it. Exit
status: 0 when the data is usable (problems, if any, are repaired, skipped or truncated and
counted), 1 when it is not (e.g. unreadable JSON, no usable image or box), 2 on bad arguments.
With ``--output_dir`` the clean data is also written as training shards.
"""

import argparse
import json
import sys

from mobiledet_jax.config import LABEL_MAPS
from mobiledet_jax.data import validate


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m mobiledet_jax.validate_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--annotations", required=True, help="COCO instances JSON")
    p.add_argument("--images", required=True, help="folder the JSON's file_name entries are in")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON report")
    p.add_argument("--max_boxes", type=int, default=100, help="training boxes kept per image")
    p.add_argument("--label_map", choices=LABEL_MAPS, default="dataset")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    p.add_argument("--output_dir", default="", help="also write the prepared shards here")
    p.add_argument("--num_shards", type=int, default=16)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = dict(max_boxes=args.max_boxes, label_map=args.label_map, workers=args.workers)
    if args.output_dir:
        from mobiledet_jax.data import coco_source  # TensorFlow: only needed to write shards

        try:
            split = coco_source.prepare(
                args.annotations,
                args.images,
                args.output_dir,
                num_shards=args.num_shards,
                **options,
            )
            report = validate.Report.from_dict(split.report)
        except validate.DataError as e:
            report = e.report or validate.Report(args.annotations, args.images, fatal=[str(e)])
    else:
        report = validate.validate_dataset(args.annotations, args.images, **options)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0 if report.usable else 1


if __name__ == "__main__":
    sys.exit(main())
