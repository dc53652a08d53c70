"""Class names of a model: the label files the project reads and writes, defined once.

A label file has one name per line, line ``i`` naming class index ``i`` (the model's output class
``i``, 0-based, no background line): the format of ``--labels``, of ``<workdir>/labels.txt``
(``workdir.write_labels``), of the ``<file>.labels.txt`` written beside an export, and the one
pycoral's ``read_label_file`` and Frigate's ``labelmap_path`` read. Those two readers also accept
``<index> <name>`` lines (pycoral line by line, Frigate when the first line starts with a number); so a
file whose names would be misread that way is written in the ``<index> <name>`` form
(``labels_text``), and ``read_labels`` reads both.

``COCO90_FILE`` is the 90-slot COCO label map of the published TF1 checkpoints (class ``i`` = COCO
category id ``i + 1``): names for the 80 ids COCO uses, ``unused_<id>`` for the 10 it does not
(the names ``data.label_map=coco90`` gives them too). Standard library only.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence

COCO90_FILE = pathlib.Path(__file__).resolve().parent / "label_maps" / "coco90.txt"
_INDEXED = re.compile(r"^\s*(\d+)[:\s]\s*(.*?)\s*$")  # "<index> <name>" or "<index>: <name>"


def coco90_names() -> tuple[str, ...]:
    """The 90 names of the COCO label map of the published checkpoints (class i = id i + 1)."""
    return tuple(parse_labels(COCO90_FILE.read_text()))


def parse_labels(text: str) -> list[str]:
    """The names of a label file's text: one per line, or ``<index> <name>`` lines (pycoral's
    form, taken when the first line starts with a number; missing indices become ``unused_<i>``).
    Trailing empty lines are dropped."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return []
    if not _INDEXED.match(lines[0]):
        return [line.strip() for line in lines]
    by_index = {}
    for n, line in enumerate(lines, start=1):
        m = _INDEXED.match(line)
        if m is None:
            raise ValueError(f"line {n} is not '<index> <name>' like the first line: {line!r}")
        if int(m.group(1)) in by_index:
            raise ValueError(f"index {m.group(1)} appears twice")
        by_index[int(m.group(1))] = m.group(2)
    return [by_index.get(i, f"unused_{i}") for i in range(max(by_index) + 1)]


def read_labels(path: str | pathlib.Path, num_classes: int | None = None) -> list[str]:
    """The names in a label file; ValueError when it has no names or not ``num_classes`` of
    them."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such label file: {path}")
    try:
        names = parse_labels(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if not names:
        raise ValueError(f"{path} holds no label names")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"{path} has {len(names)} names but the model has {num_classes} classes "
            "(one name per line, line i = class i, no background line)"
        )
    return names


def labels_text(names: Sequence[str]) -> str:
    """A label file for ``names``: one per line, or ``<index> <name>`` lines when a plain line
    would be read as an index by pycoral and Frigate (a name starting with a number)."""
    names = [" ".join(str(n).split()) for n in names]
    if any(_INDEXED.match(n) for n in names):
        return "".join(f"{i} {n}\n" for i, n in enumerate(names))
    return "".join(f"{n}\n" for n in names)


def placeholder_names(num_classes: int) -> list[str]:
    """``class_0 ... class_<n-1>``: what a file gets only when asked to go without names."""
    return [f"class_{i}" for i in range(num_classes)]
