"""Train a searched architecture: ``--config=configs/searched.py:<arch.json>[:short|long|quickstart]``.

``<arch.json>`` is what ``python -m mobiledet_jax.search`` wrote in its workdir; its ``backbone``
(the table, ``models.specs.spec_to_dict``) goes into ``config.model.arch``, so every checkpoint carries the architecture and
``evaluate``, ``export``, ``summary`` and ``predict`` rebuild the network from the workdir alone.

Recipes: ``long`` (default; 400K steps of 512 on COCO at 320x320, the published MobileDets'
recipe), ``short`` (50K steps of 1024), or ``quickstart`` (the embedded synthetic data at the
search's image size, the quickstart's 800 steps of 16: the CPU comparison of the search demo).
Searched models keep ``width_multiplier = 1.0``: the search chose every width.
"""

import json

from mobiledet_jax.config import apply_quickstart_recipe, base_config
from mobiledet_jax.models import specs

RECIPES = ("long", "short", "quickstart")


def _split(arg: str) -> tuple[str, str]:
    for recipe in RECIPES:
        for sep in (":", ","):
            if arg.endswith(sep + recipe):
                return arg[: -len(sep + recipe)], recipe
    return arg, "long"


def get_config(arg: str = ""):
    path, recipe = _split(arg or "")
    if not path:
        raise ValueError(
            "configs/searched.py needs the search result: "
            "--config=configs/searched.py:<search workdir>/arch.json[:short|long|quickstart]"
        )
    with open(path) as f:
        arch = json.load(f)
    if "backbone" not in arch:
        raise ValueError(
            f"{path} has no 'backbone' table (not an arch.json of python -m mobiledet_jax.search)"
        )
    spec = specs.spec_from_dict(arch["backbone"])
    config = base_config("searched", "long" if recipe == "quickstart" else recipe)
    config.model.arch = specs.spec_to_json(spec)
    if recipe == "quickstart":
        apply_quickstart_recipe(config)
        config.model.image_size = int(arch.get("image_size", config.model.image_size))
    config.lock()
    return config
