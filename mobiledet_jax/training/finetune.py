"""Initialise a model from a checkpoint of another (e.g. a COCO model re-headed to new classes).

Every variable whose path and shape agree is restored; the others (typically the class predictor
convs, whose width is anchors x (num_classes + 1)) keep their fresh initialisation. What was restored
and what was re-initialised is logged and returned. Restoring nothing, or leaving part of a scope that
must be restored (by default the backbone and the neck) un-restored, is an error: a wrong checkpoint
never turns silently into training from scratch.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util


class RestoreError(ValueError):
    """The checkpoint cannot initialise the model as requested."""


@dataclasses.dataclass
class RestoreReport:
    restored: list[str]
    reinitialized: list[str]  # "path (reason)"
    unused: list[str]  # checkpoint variables the model has no place for

    def summary(self) -> str:
        lines = [
            f"restored {len(self.restored)} variables, re-initialised {len(self.reinitialized)}, "
            f"left {len(self.unused)} checkpoint variables unused"
        ]
        lines += [f"  re-initialised: {p}" for p in self.reinitialized]
        lines += [f"  unused: {p}" for p in self.unused]
        return "\n".join(lines)


def _key(path: tuple[str, ...]) -> str:
    return "/".join(path)


def restore_matching(
    target: Mapping[str, Any],
    source: Mapping[str, Any],
    required_scopes: Sequence[str] = ("backbone", "neck"),
) -> tuple[dict[str, Any], RestoreReport]:
    """Merges ``source`` variables into freshly initialised ``target`` variables.

    Args:
      target: ``{'params': ..., 'batch_stats': ...}`` of the new model (initialised).
      source: the same structure from a checkpoint.
      required_scopes: top-level modules that must be restored completely.

    Returns:
      The merged variables and a RestoreReport (also logged).
    """
    flat_t = traverse_util.flatten_dict(dict(target))
    flat_s = traverse_util.flatten_dict(dict(source))
    merged, restored, reinit = {}, [], []
    for path, value in flat_t.items():
        src = flat_s.get(path)
        if src is not None and tuple(np.shape(src)) == tuple(np.shape(value)):
            merged[path] = np.asarray(src, dtype=np.asarray(value).dtype)
            restored.append(_key(path))
        else:
            merged[path] = value
            why = (
                "not in checkpoint"
                if src is None
                else f"shape {np.shape(src)} != {np.shape(value)}"
            )
            reinit.append(f"{_key(path)} ({why})")
    unused = sorted(_key(p) for p in flat_s if p not in flat_t)
    report = RestoreReport(restored, reinit, unused)
    if not restored:
        raise RestoreError(
            "the checkpoint matched none of the model's variables\n" + report.summary()
        )
    incomplete = [r for r in reinit if any(r.split("/")[1] == s for s in required_scopes)]
    if incomplete:
        raise RestoreError(
            f"the checkpoint does not cover the required scopes {list(required_scopes)}: "
            f"{len(incomplete)} variables there would start from scratch\n" + report.summary()
        )
    logging.info("%s", report.summary())
    return traverse_util.unflatten_dict(merged), report
