"""The MobileNet SSDLite baselines against an independent oracle of the TF1 graphs they mirror.

The oracle below re-derives, from the slim conv defs written out as plain tuples (not from
``baselines.py``), every TF1 variable name and shape the OD API creates: slim ``expanded_conv`` expands
only when ``make_divisible(in * ef)`` exceeds the input width, adds the residual when the stride is 1 and
the widths match, and V3's ``squeeze_excite`` has a ``make_divisible(C / 4)`` hidden width with biases;
then the SSDLite extra layers and the unshared depthwise box predictor. Parameter counts, MAdds, widths,
activations and residuals all follow from it.
"""

import functools
import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.models import baselines, build_model, endpoint_widths, resolve_blocks, tf1_names
from mobiledet_jax.models.layers import SqueezeExcite

REPO = pathlib.Path(__file__).resolve().parents[2]
NAMES = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
NUM_SLOTS = 91
ANCHORS = (3, 6, 6, 6, 6, 6)
EXTRA_DEPTHS = (512, 256, 256, 128)
R, HS, R6 = "relu", "hard_swish", "relu6"


def _conv(k, s, n, act):
    return ("conv", k, s, n, act)


def _bneck(ef, n, k, s, act, se=False, divisor=8):
    return ("bneck", ef, n, k, s, act, se, divisor)


# slim research/slim/nets/mobilenet: V2_DEF up to layer_19; V3_*_DETECTION up to layer_17 / layer_13.
V2_OPS = [
    _conv(3, 2, 32, R6),
    _bneck(1, 16, 3, 1, R6, divisor=1),
    *[_bneck(6, n, 3, s, R6) for n, s in [(24, 2), (24, 1), (32, 2), (32, 1), (32, 1)]],
    *[_bneck(6, n, 3, s, R6) for n, s in [(64, 2), (64, 1), (64, 1), (64, 1)]],
    *[_bneck(6, n, 3, s, R6) for n, s in [(96, 1), (96, 1), (96, 1), (160, 2), (160, 1)]],
    *[_bneck(6, n, 3, s, R6) for n, s in [(160, 1), (320, 1)]],
    _conv(1, 1, 1280, R6),
]
V3_LARGE_OPS = [
    _conv(3, 2, 16, HS),
    _bneck(1, 16, 3, 1, R),
    _bneck(4, 24, 3, 2, R),
    _bneck(3, 24, 3, 1, R),
    _bneck(3, 40, 5, 2, R, True),
    _bneck(3, 40, 5, 1, R, True),
    _bneck(3, 40, 5, 1, R, True),
    _bneck(6, 80, 3, 2, HS),
    _bneck(2.5, 80, 3, 1, HS),
    _bneck(184 / 80, 80, 3, 1, HS),
    _bneck(184 / 80, 80, 3, 1, HS),
    _bneck(6, 112, 3, 1, HS, True),
    _bneck(6, 112, 3, 1, HS, True),
    _bneck(6, 160 // 2, 5, 2, HS, True),  # _reduce_consecutive_layers(V3_LARGE, 13, 16)
    _bneck(6, 160 // 2, 5, 1, HS, True),
    _bneck(6, 160 // 2, 5, 1, HS, True),
    _conv(1, 1, 960 // 2, HS),
]
V3_SMALL_OPS = [
    _conv(3, 2, 16, HS),
    _bneck(1, 16, 3, 2, R, True),
    _bneck(72 / 16, 24, 3, 2, R),
    _bneck(88 / 24, 24, 3, 1, R),
    _bneck(4, 40, 5, 2, HS, True),
    _bneck(6, 40, 5, 1, HS, True),
    _bneck(6, 40, 5, 1, HS, True),
    _bneck(3, 48, 5, 1, HS, True),
    _bneck(3, 48, 5, 1, HS, True),
    _bneck(6, 96 // 2, 5, 2, HS, True),  # _reduce_consecutive_layers(V3_SMALL, 9, 12)
    _bneck(6, 96 // 2, 5, 1, HS, True),
    _bneck(6, 96 // 2, 5, 1, HS, True),
    _conv(1, 1, 576 // 2, HS),
]
# (scope, ops, from_layer) as the OD API feature extractors set them.
TF1 = {
    "mobilenet_v2": ("MobilenetV2", V2_OPS, ("layer_15/expansion_output", "layer_19")),
    "mobilenet_v3_large": ("MobilenetV3", V3_LARGE_OPS, ("layer_14/expansion_output", "layer_17")),
    "mobilenet_v3_small": ("MobilenetV3", V3_SMALL_OPS, ("layer_10/expansion_output", "layer_13")),
}


def _make_divisible(v, divisor, min_value=None):
    """slim conv_blocks._make_divisible."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _bn(out, prefix, c):
    for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
        out[f"{prefix}/BatchNorm/{leaf}"] = (c,)


@functools.cache
def oracle(name, size=320):
    """TF1 variables (name -> shape), conv and SE-gating MAdds, endpoints (name -> (channels, size)),
    the six maps, and per-block activations and residuals."""
    scope, ops, from_layer = TF1[name]
    fe = f"FeatureExtractor/{scope}"
    v, madds, se_madds, ends, acts, residuals = {}, 0, 0, {}, [], []
    hw, cin, n_conv, n_ec = size, 3, 0, 0
    for i, op in enumerate(ops, start=1):
        if op[0] == "conv":
            _, k, s, n, act = op
            p = f"{fe}/Conv" + (f"_{n_conv}" if n_conv else "")
            n_conv += 1
            hw = math.ceil(hw / s)
            v[f"{p}/weights"] = (k, k, cin, n)
            _bn(v, p, n)
            madds += hw * hw * k * k * cin * n
        else:
            _, ef, n, k, s, act, se, divisor = op
            p = f"{fe}/expanded_conv" + (f"_{n_ec}" if n_ec else "")
            n_ec += 1
            inner = _make_divisible(cin * ef, divisor)
            if inner > cin:
                v[f"{p}/expand/weights"] = (1, 1, cin, inner)
                _bn(v, f"{p}/expand", inner)
                madds += hw * hw * cin * inner
                ends[f"layer_{i}/expansion_output"] = (inner, hw)
            else:
                inner = cin
            hw = math.ceil(hw / s)
            v[f"{p}/depthwise/depthwise_weights"] = (k, k, inner, 1)
            _bn(v, f"{p}/depthwise", inner)
            madds += hw * hw * k * k * inner
            if se:
                sq = _make_divisible(inner / 4, 8)
                v[f"{p}/squeeze_excite/Conv/weights"] = (1, 1, inner, sq)
                v[f"{p}/squeeze_excite/Conv/biases"] = (sq,)
                v[f"{p}/squeeze_excite/Conv_1/weights"] = (1, 1, sq, inner)
                v[f"{p}/squeeze_excite/Conv_1/biases"] = (inner,)
                se_madds += 2 * inner * sq + hw * hw * inner  # two 1x1 convs, the gate multiply
            v[f"{p}/project/weights"] = (1, 1, inner, n)
            _bn(v, f"{p}/project", n)
            madds += hw * hw * inner * n
            residuals.append(s == 1 and cin == n)
        acts.append(act)
        cin = n
        ends[f"layer_{i}"] = (n, hw)
    maps = [ends[from_layer[0]], ends[from_layer[1]]]
    prefix = from_layer[1]
    for j, d in enumerate(EXTRA_DEPTHS, start=2):
        names = (f"1_Conv2d_{j}_1x1_{d // 2}", f"2_Conv2d_{j}_3x3_s2_{d}")
        a, b = (f"{fe}/{prefix}_{x}" for x in names)
        v[f"{a}/weights"] = (1, 1, cin, d // 2)
        _bn(v, a, d // 2)
        madds += hw * hw * cin * d // 2
        hw = math.ceil(hw / 2)
        v[f"{b}_depthwise/depthwise_weights"] = (3, 3, d // 2, 1)
        _bn(v, f"{b}_depthwise", d // 2)
        v[f"{b}/weights"] = (1, 1, d // 2, d)
        _bn(v, b, d)
        madds += hw * hw * (9 * d // 2 + d // 2 * d)
        cin = d
        maps.append((d, hw))
    for m, ((c, mhw), a) in enumerate(zip(maps, ANCHORS, strict=True)):
        for pred, width in (("BoxEncodingPredictor", 4), ("ClassPredictor", NUM_SLOTS)):
            p = f"BoxPredictor_{m}/{pred}"
            v[f"{p}_depthwise/depthwise_weights"] = (3, 3, c, 1)
            _bn(v, f"{p}_depthwise", c)
            v[f"{p}/weights"] = (1, 1, c, a * width)
            v[f"{p}/biases"] = (a * width,)
            madds += mhw * mhw * (9 * c + c * a * width)
    return dict(
        variables=v,
        madds=madds,
        se_madds=se_madds,
        endpoints=ends,
        maps=maps,
        activations=acts,
        residuals=residuals,
    )


def _count(shapes, keep=lambda name: True):
    return sum(math.prod(s) for n, s in shapes.items() if keep(n))


# All variables (BN moving statistics included) at 320x320 with 91 class slots, from the oracle.
PARAMS = {
    "mobilenet_v2": 4_551_295,
    "mobilenet_v3_large": 3_281_199,
    "mobilenet_v3_small": 1_806_207,
}
ENDPOINTS = {  # the two SSD sources: (channels, stride)
    "mobilenet_v2": ((576, 16), (1280, 32)),
    "mobilenet_v3_large": ((672, 16), (480, 32)),
    "mobilenet_v3_small": ((288, 16), (288, 32)),
}


@functools.cache
def _shapes(name, size=320):
    cfg = config_lib.base_config(name).model
    model = build_model(cfg)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    return variables, out


@pytest.mark.parametrize("name", NAMES)
def test_variables_match_the_tf1_graph_one_to_one(name):
    variables, _ = _shapes(name)
    expected = oracle(name)["variables"]
    ours = tf1_names.tf1_shapes(variables, TF1[name][0])
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {n: s for n, s in ours.items() if expected[n] != s} == {}
    n_vars = sum(math.prod(v.shape) for v in jax.tree.leaves(variables))
    assert n_vars == _count(expected) == PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_endpoints(name):
    _, out = _shapes(name)
    sizes = [m.shape[1] for m in out["feature_maps"]]
    assert sizes == [20, 10, 5, 3, 2, 1]
    anchors = sum(s * s * a for s, a in zip(sizes, ANCHORS, strict=True))
    assert anchors == 1200 + 600 + 150 + 54 + 24 + 6 == 2034
    assert out["box_encodings"].shape == (1, 2034, 4)
    assert out["class_logits"].shape == (1, 2034, NUM_SLOTS)
    spec = baselines.BASELINES[name]
    got = tuple(
        (out["endpoints"][e].shape[-1], 320 // out["endpoints"][e].shape[1])
        for e in spec.ssd_sources
    )
    assert got == ENDPOINTS[name]
    o = oracle(name)
    assert spec.ssd_sources == TF1[name][2]
    assert [(m.shape[-1], m.shape[1]) for m in out["feature_maps"]] == o["maps"]
    widths = endpoint_widths(spec)
    assert tuple(widths[e] for e in spec.ssd_sources) == tuple(c for c, _ in ENDPOINTS[name])
    assert {e: o["endpoints"][e][0] for e in widths} == widths


@pytest.mark.parametrize("name", NAMES)
def test_activations_residuals_and_norm(name):
    spec = baselines.BASELINES[name]
    blocks = resolve_blocks(spec)
    o = oracle(name)
    assert [b.activation for b in blocks] == o["activations"]
    assert [b.spec.residual for b in blocks if b.spec.block != "conv"] == o["residuals"]
    assert spec.bn_epsilon == 0.001
    # V2: slim training_scope(bn_decay=0.9997); V3: the configs' conv_hyperparams override (0.97).
    assert spec.bn_momentum == (0.9997 if name == "mobilenet_v2" else 0.97)
    if name != "mobilenet_v2":  # slim mobilenet_v3.squeeze_excite
        assert (spec.se_ratio, spec.se_activation, spec.se_gate) == (0.25, "relu", "hard_sigmoid")


def test_published_numbers():
    # ssdlite_mobilenet_v3_large_320x320_coco.config (tensorflow/models
    # research/object_detection/samples/configs) states "3.22M parameters, 1.02B FLOPs". That matches
    # the variables without BatchNorm (conv weights and biases), and 2 x MAdds with the SE gating.
    o = oracle("mobilenet_v3_large")
    assert round(_count(o["variables"], lambda n: "/BatchNorm/" not in n) / 1e4) == 322
    assert round(2 * (o["madds"] + o["se_madds"]) / 1e7) == 102


def test_slim_residual_rule_follows_the_width_multiplier():
    # At 0.35 the V2 stem and first block are both clamped to min_depth 16: slim adds the residual.
    assert not resolve_blocks(baselines.MOBILENET_V2)[1].spec.residual
    blocks = resolve_blocks(baselines.MOBILENET_V2, 0.35)
    assert (blocks[0].out, blocks[1].out, blocks[1].spec.residual) == (16, 16, True)


def test_hard_sigmoid_gate_is_slims():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 16))
    se = SqueezeExcite(8, activation="relu", gate="hard_sigmoid")
    params = se.init(jax.random.key(1), x)
    p = params["params"]
    pooled = np.asarray(x).mean(axis=(1, 2))
    h = np.maximum(
        pooled @ np.asarray(p["Conv"]["kernel"])[0, 0] + np.asarray(p["Conv"]["bias"]), 0
    )
    s = h @ np.asarray(p["Conv_1"]["kernel"])[0, 0] + np.asarray(p["Conv_1"]["bias"])
    gate = np.clip(s + 3, 0, 6) * 0.16667
    np.testing.assert_allclose(
        se.apply(params, x), np.asarray(x) * gate[:, None, None, :], rtol=1e-5
    )


@pytest.mark.parametrize("name", NAMES)
def test_config_files(name):
    path = REPO / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.name == name
    with pytest.raises(AttributeError):
        config.model.no_such_field = 1


def test_short_recipes_cap_the_batch_norm_momentum():
    """MobileNetV2's TF1 decay 0.9997 keeps 79% of the initial moving statistics after the
    quickstart's 800 steps; the quickstart recipe caps every backbone at 0.99, the full recipes
    keep the table's own (MobileNetV3's 0.97 is below the cap either way)."""
    from mobiledet_jax.models.factory import model_backbone_spec

    c = config_lib.base_config("mobilenet_v2")
    c.model.image_size = 64
    assert model_backbone_spec(c.model).bn_momentum == 0.9997
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3)) + 3.0
    moved = {}
    for cap in (1.0, 0.99):
        c.model.bn_momentum_max = cap
        model = build_model(c.model)
        variables = model.init(jax.random.PRNGKey(0), x, train=False)
        _, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
        stem = state["batch_stats"]["backbone"]["Conv"]["BatchNorm"]
        init = variables["batch_stats"]["backbone"]["Conv"]["BatchNorm"]
        moved[cap] = np.asarray(stem["mean"]) - np.asarray(init["mean"])
    # one step moves the mean (1 - momentum) of the way to the batch's: 0.01 / 0.0003
    np.testing.assert_allclose(moved[0.99], moved[1.0] * (0.01 / 0.0003), rtol=1e-3)
    quick = config_lib.base_config("mobilenet_v2")
    config_lib.apply_quickstart_recipe(quick)
    assert model_backbone_spec(quick.model).bn_momentum == 0.99
    quick.model.name = "mobilenet_v3_large"
    assert model_backbone_spec(quick.model).bn_momentum == 0.97
    quick.model.bn_momentum_max = 1.5
    with pytest.raises(ValueError, match="bn_momentum_max"):
        model_backbone_spec(quick.model)
