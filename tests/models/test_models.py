"""The four MobileDets: parameter counts, shapes, TF1 variable correspondence, compilation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mobiledet_jax import config as config_lib
from mobiledet_jax.models import (
    Backbone,
    backbone_spec,
    build_model,
    endpoint_widths,
    input_size,
    specs,
    tf1_names,
)

MOBILEDETS = ["mobiledet_cpu", "mobiledet_dsp", "mobiledet_edgetpu", "mobiledet_gpu"]
VARIANT = {n: n.split("_")[1] for n in MOBILEDETS}

# SPEC section 6: all variables (BN moving statistics included), 320x320, 91 class slots.
PARAMS = {
    "mobiledet_cpu": 4_205_423,
    "mobiledet_dsp": 7_159_343,
    "mobiledet_edgetpu": 4_196_095,
    "mobiledet_gpu": 13_109_151,
}
BACKBONE_PARAMS = {
    "mobiledet_cpu": 3_036_728,
    "mobiledet_dsp": 5_886_464,
    "mobiledet_edgetpu": 2_815_456,
    "mobiledet_gpu": 11_718_560,
}
ENDPOINTS = {  # SPEC section 2, C1..C5
    "mobiledet_cpu": (8, 16, 32, 72, 144),
    "mobiledet_dsp": (24, 32, 64, 144, 240),
    "mobiledet_edgetpu": (16, 16, 40, 96, 384),
    "mobiledet_gpu": (16, 32, 64, 128, 384),
}


def _shapes(name, height=320, width=320, **overrides):
    cfg = config_lib.base_config(name).model
    for k, v in overrides.items():
        cfg[k] = v
    model = build_model(cfg)
    x = jnp.zeros((1, height, width, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    return model, variables, out


def _count(tree):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", MOBILEDETS)
def test_parameter_counts_shapes_and_endpoints(name):
    _, variables, out = _shapes(name)
    assert _count(variables) == PARAMS[name]
    assert _count({k: v["backbone"] for k, v in variables.items()}) == BACKBONE_PARAMS[name]
    assert out["box_encodings"].shape == (1, 2034, 4)
    assert out["class_logits"].shape == (1, 2034, 91)
    widths = tuple(out["endpoints"][f"C{i}"].shape[-1] for i in range(1, 6))
    assert widths == ENDPOINTS[name]
    strides = tuple(320 // out["endpoints"][f"C{i}"].shape[1] for i in range(1, 6))
    assert strides == (2, 4, 8, 16, 32)
    assert [m.shape[1] for m in out["feature_maps"]] == [20, 10, 5, 3, 2, 1]
    assert tuple(endpoint_widths(specs.MOBILEDETS[name]).values()) == ENDPOINTS[name]


@pytest.mark.parametrize("name", MOBILEDETS)
def test_every_tf1_variable_has_a_counterpart_of_the_same_shape(name, tf1_reference_dir):
    manifest = json.loads((tf1_reference_dir / VARIANT[name] / "manifest.json").read_text())
    _, variables, _ = _shapes(name)
    ours = tf1_names.tf1_shapes(variables, manifest["scope_name"])
    theirs = {v["name"]: tuple(v["shape"]) for v in manifest["variables"]}
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    assert {n: s for n, s in ours.items() if theirs[n] != s} == {}
    # trainable = params, non-trainable = BN moving statistics, as in the manifest
    flat = traverse_util.flatten_dict(variables)
    stats = {tf1_names.tf1_name(p, manifest["scope_name"]) for p in flat if p[0] == "batch_stats"}
    assert stats == {v["name"] for v in manifest["variables"] if not v["trainable"]}


def test_non_square_and_other_sizes():
    _, _, out = _shapes("mobiledet_edgetpu", 256, 320)
    sizes = [m.shape[1:3] for m in out["feature_maps"]]
    assert sizes == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    anchors = sum(h * w * a for (h, w), a in zip(sizes, (3, 6, 6, 6, 6, 6), strict=True))
    assert out["box_encodings"].shape == (1, anchors, 4)
    _, _, out = _shapes("mobiledet_cpu", 300, 300)  # odd sizes: SAME ceil division
    assert [m.shape[1] for m in out["feature_maps"]] == [19, 10, 5, 3, 2, 1]


def test_num_classes_and_width_multiplier():
    _, variables, out = _shapes("mobiledet_edgetpu", num_classes=3)
    assert out["class_logits"].shape == (1, 2034, 4)
    _, _, out = _shapes("mobiledet_edgetpu", width_multiplier=0.5)
    widths = [out["endpoints"][f"C{i}"].shape[-1] for i in range(1, 6)]
    assert widths == [8, 8, 24, 48, 192]  # round8(w * 0.5), floor 8
    assert [m.shape[-1] for m in out["feature_maps"][2:]] == [256, 128, 128, 64]


def test_dsp_tf2_variant_drops_block20_residual():
    x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
    m1, m2 = (
        Backbone(backbone_spec("mobiledet_dsp")),
        Backbone(backbone_spec("mobiledet_dsp", False)),
    )

    @jax.jit
    def run(x):
        variables = m1.init(jax.random.key(1), x)
        return m1.apply(variables, x), m2.apply(variables, x)

    assert _count(jax.eval_shape(lambda: m1.init(jax.random.key(1), x))) == _count(
        jax.eval_shape(lambda: m2.init(jax.random.key(1), x))
    )
    e1, e2 = run(x)
    np.testing.assert_array_equal(np.asarray(e1["C4"]), np.asarray(e2["C4"]))
    assert float(jnp.max(jnp.abs(e1["C5"] - e2["C5"]))) > 1e-3


def test_initializers_follow_the_spec():
    model = build_model(config_lib.base_config("mobiledet_gpu").model)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    p = variables["params"]
    # He-normal truncated: stddev sqrt(2 / fan_in) / 0.8796 before truncation, i.e. sqrt(2 / fan_in)
    # after it; for FusedConv_16's 3x3x128x1024 expansion fan_in = 1152.
    k = np.asarray(p["backbone"]["FusedConv_16"]["Conv"]["kernel"])
    assert abs(k.std() / np.sqrt(2 / 1152) - 1) < 0.02
    assert np.abs(k).max() <= 2 * np.sqrt(2 / 1152) / 0.8796256610 + 1e-6
    head = np.asarray(p["head"]["BoxPredictor_2"]["ClassPredictor"]["kernel"])
    assert abs(head.std() / 0.03 - 1) < 0.02 and np.abs(head).max() > 2 * 0.03  # not truncated
    extra = np.asarray(p["neck"]["C5_2_Conv2d_2_3x3_s2_512"]["kernel"])
    assert np.abs(extra).max() <= 2 * 0.03 + 1e-6  # truncated normal, stddev 0.03
    assert not np.any(np.asarray(p["head"]["BoxPredictor_2"]["ClassPredictor"]["bias"]))
    assert not np.any(np.asarray(p["backbone"]["IBN"]["Conv_1"]["BatchNorm"]["bias"]))


def test_input_size():
    cfg = config_lib.base_config("mobiledet_cpu").model
    assert input_size(cfg) == (320, 320)
    cfg.image_height = 256
    assert input_size(cfg) == (256, 320)


@pytest.mark.slow
# bfloat16 compute, checked against the float32 model in the same jit (float32 training steps are
# compiled by the training tests). MobileDet-CPU (IBN, squeeze-excite, hard-swish) and MobileDet-GPU
# (Fused, Tucker, IBN) between them hold every block type and activation of the four MobileDets;
# compiling the other two as well cost ~2.5 minutes of test time for no new layer.
@pytest.mark.parametrize("name", ["mobiledet_cpu", "mobiledet_gpu"])
@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_forward_jit_compiles(name, dtype):
    cfg = config_lib.base_config(name).model
    cfg.conv_form = "conv"  # XLA's convolution, what a TPU runs bfloat16 in (68 -> 53 s here)
    f32_model = build_model(cfg)
    cfg.compute_dtype = dtype
    model = build_model(cfg)
    # 160x160 keeps the CPU run short; the graph (and so compilation) is the one of any size.
    x = jax.random.uniform(jax.random.key(0), (2, 160, 160, 3), minval=-1, maxval=1)

    @jax.jit
    def run(x):
        variables = model.init(jax.random.key(1), x)
        out = model.apply(variables, x)
        train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        ref = f32_model.apply(variables, x) if dtype == "bfloat16" else out
        return variables, out, train_out, updates, ref

    variables, out, train_out, updates, ref = run(x)
    assert out["class_logits"].dtype == jnp.float32
    assert out["box_encodings"].shape == (2, 10 * 10 * 3 + 5 * 5 * 6 + (9 + 4 + 1 + 1) * 6, 4)
    assert train_out["class_logits"].shape == out["box_encodings"].shape[:2] + (91,)
    assert bool(jnp.all(jnp.isfinite(out["class_logits"])))
    # train mode updates the BN statistics from the batch
    before = jax.tree.leaves(variables["batch_stats"])[0]
    after = jax.tree.leaves(updates["batch_stats"])[0]
    assert not np.allclose(np.asarray(before), np.asarray(after))
    a = np.asarray(out["class_logits"]).ravel()
    b = np.asarray(ref["class_logits"]).ravel()
    if dtype == "bfloat16":  # bfloat16 compute follows float32 closely (logit correlation)
        assert np.corrcoef(a, b)[0, 1] > 0.95


def test_mistyped_config_override_is_an_error():
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    args = ["-m", "mobiledet_jax.summary", "--config=configs/mobiledet_cpu.py"]
    bad = subprocess.run(
        [sys.executable, *args, "--config.model.nmae=x"], capture_output=True, text=True, cwd=root
    )
    assert bad.returncode != 0
    assert 'Did you mean "name"' in bad.stderr
    typed = subprocess.run(
        [sys.executable, *args, "--config.model.num_classes=abc"], capture_output=True, text=True,
        cwd=root,
    )  # fmt: skip
    assert typed.returncode != 0


def test_config_files_are_locked(tmp_path):
    import importlib.util
    import pathlib

    arch = tmp_path / "arch.json"  # configs/searched.py reads a search result
    arch.write_text(json.dumps({"backbone": specs.spec_to_dict(specs.MOBILEDET_EDGETPU)}))
    for path in sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cfg = module.get_config(str(arch)) if path.stem == "searched" else module.get_config()
        with pytest.raises(AttributeError):
            cfg.model.nmae = 1
        if "search" in cfg:  # a search config: its model is the supernet of config.search.space
            assert cfg.model.name == "searched" and not cfg.model.arch
            continue
        build_model(cfg.model)  # every config names a buildable model
