"""Checks a COCO-format detection dataset before training and prints what would be repaired.

    python -m mobiledet_jax.validate_data --annotations=instances.json --images=<folder> [--json[=<path>]]

Every image is decoded and every box checked exactly as preparation for training does it. Exit
status: 0 when the data is usable (problems, if any, are repaired, skipped or truncated and
counted), 1 when it is not (e.g. unreadable JSON, no usable image or box), 2 on bad arguments.
With ``--output_dir`` the clean data is also written as training shards.

    python -m mobiledet_jax.validate_data --annotations=... --images=... --plots=<dir> [--image_size=320]

also writes the dataset statistics of the validated training boxes into ``<dir>``
(``visualization.dataset_report``): images and boxes per class, box sizes and aspect ratios,
boxes per image, and the anchor coverage of the ``--image_size`` input (``H`` or ``HxW``): the
fraction of boxes whose best anchor has IoU >= the matcher's threshold, by box size, and how many
only the forced match reaches (``detection.anchor_coverage``); the same numbers in
``statistics.json``.
"""

import argparse
import sys

from mobiledet_jax import command_line
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
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        help="the JSON report: to this path, or (bare --json, --json=-) instead of the text",
    )
    p.add_argument("--max_boxes", type=int, default=100, help="training boxes kept per image")
    p.add_argument("--label_map", choices=LABEL_MAPS, default="dataset")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    p.add_argument("--output_dir", default="", help="also write the prepared shards here")
    p.add_argument("--num_shards", type=int, default=16)
    p.add_argument("--plots", default="", help="write dataset statistics figures + JSON here")
    p.add_argument(
        "--image_size", type=_image_size, default=(320, 320), help="model input: H or HxW"
    )
    return p.parse_args(argv)


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        size = tuple(int(v) for v in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected H or HxW, got {text!r}")
    return size


def _statistics(args, options) -> tuple[validate.Report, dict | None]:
    """Validation that keeps the boxes, then the statistics report in ``args.plots``."""
    from mobiledet_jax.data import statistics  # numpy only
    from mobiledet_jax.visualization import dataset_report  # matplotlib, JAX (anchors)

    report, table = statistics.validate_with_boxes(args.annotations, args.images, **options)
    if table is None or not report.usable:
        return report, None
    return report, dataset_report.write_dataset_report(table, args.plots, args.image_size)


def _prepare(args, options) -> validate.Report:
    from mobiledet_jax.data import coco_source  # TensorFlow: only needed to write shards

    try:
        split = coco_source.prepare(
            args.annotations, args.images, args.output_dir, num_shards=args.num_shards, **options
        )
        return validate.Report.from_dict(split.report)
    except validate.DataError as e:
        return e.report or validate.Report(args.annotations, args.images, fatal=[str(e)])


def main(argv=None) -> int:
    args = parse_args(argv)
    options = dict(max_boxes=args.max_boxes, label_map=args.label_map, workers=args.workers)
    stats = None
    if args.output_dir:
        report = _prepare(args, options)
        if args.plots and report.usable:  # a second pass: preparation keeps no boxes
            _, stats = _statistics(args, options)
    elif args.plots:
        report, stats = _statistics(args, options)
    else:
        report = validate.validate_dataset(args.annotations, args.images, **options)
    command_line.write_json(args.json, report.to_dict())
    if args.json != "-":
        print(report.format())
    if stats is not None:
        from mobiledet_jax.visualization import dataset_report

        out = sys.stderr if args.json == "-" else sys.stdout  # stdout stays one JSON document
        print(dataset_report.format_coverage(stats), file=out)
        print(f"wrote {len(stats['files'])} files to {args.plots}", file=out)
    return 0 if report.usable else 1


if __name__ == "__main__":
    sys.exit(main())
