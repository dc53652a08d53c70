"""A quickstart-like workdir without training: ``configs/quickstart.py``'s model (MobileDet-GPU,
width 0.35, 160x160, the synthetic dataset's 4 classes) with random weights (MobileDet-GPU's
scores spread without ties as they are), saved with its ``config.json`` as a training run would."""

import pathlib

from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.data.synthetic import CLASS_NAMES
from mobiledet_jax.models import build_model, input_size, random_weights
from tests.helpers import train_harness

__all__ = ["CLASS_NAMES", "workdir"]


def config():
    """configs/quickstart.py with the default synthetic sizes (cached, quick to generate)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "quickstart", train_harness.REPO / "configs" / "quickstart.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.unlock()
    c.data.synthetic.num_train = 512
    c.model.conv_form = "conv"  # a forward pass or two: the faster compile (train_harness.py)
    return c


def workdir(path: pathlib.Path, step: int = 800, seed: int = 2) -> pathlib.Path:
    c = config()
    model = build_model(c.model, c.detection.anchors)
    variables = random_weights.random_variables(model, input_size(c.model), seed=seed)
    workdir_lib.save_model(str(path), variables, c.model, step=step, source="random")
    workdir_lib.write_config(c, str(path))
    return path
