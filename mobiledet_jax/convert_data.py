"""Converts YOLO, Pascal VOC or TF OD API TFRecord data to COCO JSON files.

    python -m mobiledet_jax.convert_data --from=yolo --data=<data.yaml> --output=<dir>
    python -m mobiledet_jax.convert_data --from=voc --data=<VOC root> --output=<dir>
    python -m mobiledet_jax.convert_data --from=tfod_tfrecord --data=<record pattern> \\
        --label_map=<label_map.pbtxt> --output=<dir> [--splits=val]

Writes ``<dir>/instances_<split>.json`` per split (file names relative to the split's image folder,
which the JSON's ``info.images`` names; the images of TFRecords are written to
``<dir>/images_<split>/``) and prints what reading found and the flags that use the files. Training
does not need this: ``--config.data.source=yolo|voc|tfod_tfrecord`` reads the data as it is. Exit
status: 0 when written, 1 when the data cannot be read (e.g. no data.yaml), 2 on bad arguments.
"""

import argparse
import sys

from mobiledet_jax.config import data_config
from mobiledet_jax.data import formats, problems

DEFAULT_SPLITS = {"yolo": "train,val", "voc": "train,val", "tfod_tfrecord": "train"}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m mobiledet_jax.convert_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from", dest="source", required=True, choices=tuple(formats.FORMATS), help="format"
    )
    p.add_argument("--data", required=True, help="data.yaml | VOC root | TFRecord pattern")
    p.add_argument("--output", required=True, help="folder for the instances JSON files")
    p.add_argument("--splits", default="", help="comma-separated (default: train,val; tfod: train)")
    p.add_argument("--label_map", default="", help="tfod_tfrecord: label_map.pbtxt")
    p.add_argument(
        "--difficult_as_crowd",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="VOC / TFRecord difficult objects as iscrowd=1 (as data.difficult_as_crowd)",
    )
    args = p.parse_args(argv)
    args.splits = [s for s in (args.splits or DEFAULT_SPLITS[args.source]).split(",") if s]
    if args.source == "tfod_tfrecord" and len(args.splits) != 1:
        p.error("--from=tfod_tfrecord converts one pattern: give one split name in --splits")
    if args.source == "tfod_tfrecord" and not args.label_map:
        p.error("--from=tfod_tfrecord needs --label_map")
    if any(s not in ("train", "val") for s in args.splits):
        p.error("--splits: train and/or val")
    return args


def config_of(args):
    """The ``config.data`` block reading ``--data`` as ``--from``."""
    cfg = data_config()
    cfg.source = args.source
    cfg.difficult_as_crowd = args.difficult_as_crowd
    if args.source == "yolo":
        cfg.yolo.data_yaml = args.data
    elif args.source == "voc":
        cfg.voc.root = args.data
    else:
        cfg.tfod_tfrecord[f"{args.splits[0]}_pattern"] = args.data
        cfg.tfod_tfrecord.label_map = args.label_map
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        written = formats.convert(config_of(args), args.splits, args.output)
    except problems.DataError as e:
        print(f"FATAL: {e}")
        return 1
    for c in written:
        print(f"{c.split}: {c.annotations} (images in {c.images}); found while reading:")
        print(formats.format_problems(c.report))
        print(f"  check: python -m mobiledet_jax.validate_data --annotations={c.annotations} "
              f"--images={c.images}")  # fmt: skip
        print(f"  train: --config.data.coco_json.{c.split}_annotations={c.annotations} "
              f"--config.data.coco_json.{c.split}_images={c.images}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
