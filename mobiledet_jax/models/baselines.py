"""MobileNetV2 / V3 SSDLite feature extractors as the TF1 Object Detection API builds them.

The paper's baselines, as data. Each table is the slim conv def the OD API feature extractor builds,
up to the second SSD source (``final_endpoint``); row i is slim's endpoint ``layer_{i+1}``.

Sources (tensorflow/models):
  - research/slim/nets/mobilenet/mobilenet_v2.py ``V2_DEF``, mobilenet_v3.py ``V3_LARGE_DETECTION`` /
    ``V3_SMALL_DETECTION`` (``V3_LARGE`` / ``V3_SMALL`` with spec rows 13..16 / 9..12 halved by
    ``_reduce_consecutive_layers``), conv_blocks.py ``expanded_conv`` / ``squeeze_excite``,
    mobilenet.py ``mobilenet_base`` / ``depth_multiplier`` / ``training_scope``;
  - research/object_detection/models/ssd_mobilenet_v2_feature_extractor.py and
    ssd_mobilenet_v3_feature_extractor.py (SSD sources, ``bn_decay=0.9997``, min_depth);
  - research/object_detection/samples/configs/ssdlite_mobilenet_v2_coco.config and
    ssdlite_mobilenet_v3_{large,small}_320x320_coco.config (min_depth 16; the V3 configs set
    ``override_base_feature_extractor_hyperparams``, so their BN decay 0.97 and truncated-normal 0.03
    init reach the backbone; the V2 config does not, leaving slim's training_scope: decay 0.9997,
    truncated normal 0.09). Every BN epsilon is 0.001 (the slim default and both configs).

How slim's semantics map onto the tables:
  - ``expanded_conv`` expands only when ``make_divisible(in * ef, 8)`` exceeds the input width: the
    ef=1 blocks are ``ibn_noexp`` rows (still scoped ``expanded_conv``, with ``depthwise``/``project``);
  - its residual is automatic (stride 1, equal widths): ``residual_rule="slim"``;
  - V3's SE is the ``expansion_transform`` applied to the depthwise output, hidden width
    ``make_divisible(C / 4, 8)`` of that (expanded) width, ReLU inside, gate relu6(x + 3) * 0.16667;
  - V3 blocks use ReLU (not ReLU6: V3 ``DEFAULTS``) or hard-swish per row; the stem and the final 1x1
    conv are hard-swish; V2 is ReLU6 throughout; projections are linear.
"""

from mobiledet_jax.models.specs import BackboneSpec, conv, ibn, noexp

HS = "hard_swish"
RELU = "relu"


def _v3_bneck(k, s, out, e, act, se=False, **kw):
    """slim ``mbv3_op`` / ``mbv3_op_se``: the IBN row, or the no-expansion row when ef == 1."""
    if e == 1:
        return noexp(k, s, out, activation=act, se=se, **kw)
    return ibn(k, s, out, e, activation=act, se=se, **kw)


_SLIM = dict(
    naming="mobilenet",
    expansion_rule="divisible8",
    residual_rule="slim",
    min_depth=16,
    bn_epsilon=0.001,
)
# The V3 detection configs override the backbone's BN and init with the feature extractor's
# conv_hyperparams; the SE is slim mobilenet_v3.squeeze_excite (squeeze_factor 4).
_V3 = dict(
    _SLIM,
    activation=RELU,
    se_ratio=0.25,
    se_activation=RELU,
    se_gate="hard_sigmoid",
    bn_momentum=0.97,
    init_stddev=0.03,
)

MOBILENET_V2 = BackboneSpec(
    scope="MobilenetV2",
    activation="relu6",
    blocks=(
        conv(3, 2, 32),  # layer_1: Conv
        noexp(3, 1, 16),  # layer_2: expand_input(1, divisible_by=1) -> no expansion
        ibn(3, 2, 24, 6),
        ibn(3, 1, 24, 6),
        ibn(3, 2, 32, 6),
        ibn(3, 1, 32, 6),
        ibn(3, 1, 32, 6),
        ibn(3, 2, 64, 6),
        ibn(3, 1, 64, 6),
        ibn(3, 1, 64, 6),
        ibn(3, 1, 64, 6),
        ibn(3, 1, 96, 6),
        ibn(3, 1, 96, 6),
        ibn(3, 1, 96, 6),
        ibn(3, 2, 160, 6, expansion_endpoint="layer_15/expansion_output"),  # 576 ch, stride 16
        ibn(3, 1, 160, 6),
        ibn(3, 1, 160, 6),
        ibn(3, 1, 320, 6),
        conv(1, 1, 1280, endpoint="layer_19"),  # Conv_1
    ),
    ssd_sources=("layer_15/expansion_output", "layer_19"),
    extra_layer_prefix="layer_19",
    bn_momentum=0.9997,
    init_stddev=0.09,
    **_SLIM,
)

MOBILENET_V3_LARGE = BackboneSpec(
    scope="MobilenetV3",
    blocks=(
        conv(3, 2, 16, activation=HS),  # layer_1
        _v3_bneck(3, 1, 16, 1, RELU),
        _v3_bneck(3, 2, 24, 4, RELU),
        _v3_bneck(3, 1, 24, 3, RELU),
        _v3_bneck(5, 2, 40, 3, RELU, se=True),
        _v3_bneck(5, 1, 40, 3, RELU, se=True),
        _v3_bneck(5, 1, 40, 3, RELU, se=True),
        _v3_bneck(3, 2, 80, 6, HS),
        _v3_bneck(3, 1, 80, 2.5, HS),
        _v3_bneck(3, 1, 80, 184 / 80, HS),
        _v3_bneck(3, 1, 80, 184 / 80, HS),
        _v3_bneck(3, 1, 112, 6, HS, se=True),
        _v3_bneck(3, 1, 112, 6, HS, se=True),
        # layer_14..17: V3_LARGE_DETECTION halves 160, 160, 160, 960.
        _v3_bneck(5, 2, 80, 6, HS, se=True, expansion_endpoint="layer_14/expansion_output"),  # 672
        _v3_bneck(5, 1, 80, 6, HS, se=True),
        _v3_bneck(5, 1, 80, 6, HS, se=True),
        conv(1, 1, 480, activation=HS, endpoint="layer_17"),
    ),
    ssd_sources=("layer_14/expansion_output", "layer_17"),
    extra_layer_prefix="layer_17",
    **_V3,
)

MOBILENET_V3_SMALL = BackboneSpec(
    scope="MobilenetV3",
    blocks=(
        conv(3, 2, 16, activation=HS),  # layer_1
        _v3_bneck(3, 2, 16, 1, RELU, se=True),
        _v3_bneck(3, 2, 24, 72 / 16, RELU),
        _v3_bneck(3, 1, 24, 88 / 24, RELU),
        _v3_bneck(5, 2, 40, 4, HS, se=True),
        _v3_bneck(5, 1, 40, 6, HS, se=True),
        _v3_bneck(5, 1, 40, 6, HS, se=True),
        _v3_bneck(5, 1, 48, 3, HS, se=True),
        _v3_bneck(5, 1, 48, 3, HS, se=True),
        # layer_10..13: V3_SMALL_DETECTION halves 96, 96, 96, 576.
        _v3_bneck(5, 2, 48, 6, HS, se=True, expansion_endpoint="layer_10/expansion_output"),  # 288
        _v3_bneck(5, 1, 48, 6, HS, se=True),
        _v3_bneck(5, 1, 48, 6, HS, se=True),
        conv(1, 1, 288, activation=HS, endpoint="layer_13"),
    ),
    ssd_sources=("layer_10/expansion_output", "layer_13"),
    extra_layer_prefix="layer_13",
    **_V3,
)

BASELINES = {
    "mobilenet_v2": MOBILENET_V2,
    "mobilenet_v3_large": MOBILENET_V3_LARGE,
    "mobilenet_v3_small": MOBILENET_V3_SMALL,
}
