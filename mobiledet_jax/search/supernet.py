"""The one-shot supernet of a search space (TuNAS weight sharing), one static graph for every
architecture: what an architecture is arrives as data (``weights``), never as shapes.

``weights`` is float32 ``[D, C_max]``: row d holds the mixing weights of decision d's choices
(one-hot for a sampled architecture, ``one_hot_weights``; uniform over the valid choices during
op warmup, ``uniform_weights``).

What is shared, and how:

- **Widths are prefix channel masks.** Every conv is built at the largest width it can have (the
  max of each choice list: widest block, expansion 8, Tucker ranks 0.75); a choice of width k uses
  the first k channels of that kernel, and channels >= k are zeroed after each conv + BN (+ act).
  The widths are the standalone model's rules (``models.backbone.resolve_blocks``): IBN / Fused
  inner width ``int(cin * e)`` (TF1's exact rule), Tucker ranks ``round8(cin * r_in)`` and
  ``round8(cout * r_out)``, SE hidden ``round8(se_input / 4)``. A mask is the weighted sum of the
  prefix masks of its choices (outer product over the rows it depends on, e.g. the input width and
  the expansion), so a soft row gives a soft mask.
- **Ops are branches.** Each (family, kernel size) of a layer slot is its own parameter set
  (``backbone/b3_l2/ibn_k5``); the slot output is ``sum_i w_i * branch_i(x)`` with
  ``w = w_family * w_kernel`` (``skip`` adds nothing, so the residual add gives the identity).
  Layers 2..n of a block are residual; layer 1 has the block stride and no residual.
- **BatchNorm is stateless**: batch statistics in train and eval passes alike, only ``scale`` and
  ``bias`` parameters, no ``batch_stats`` (a shared running average means nothing when every
  step is another architecture). Statistics are per channel, so masked channels (all zero, BN
  output ``bias``, then masked) do not touch the active ones. The neck and head are the standalone
  ``SSDLiteNeck`` / ``SSDLiteHead`` (same parameter layout), applied functionally with their
  running averages thrown away (``Supernet`` holds their ``params`` trees and calls
  ``apply(..., mutable=["batch_stats"])``: Flax's lifted ``map_variables`` cannot make a
  collection mutable inside when it is not outside). The C4 / C5 maps are zero beyond the active
  widths, but the head's depthwise BN turns a zero channel into relu6(bias), so the kernels that
  read C4 / C5 are masked too (``supernet_weights.mask_head`` / ``mask_neck``).
- **Conditionals.** Each branch runs under Flax's lifted ``nn.cond(w != 0, ...)`` (the false side
  returns zeros), so a sampled architecture computes only its own branches. ``lift.cond`` needs
  both sides to create the same variables, so ``init`` runs every branch unconditionally
  (``self.is_initializing()``). ``Supernet(conditional=False)`` computes and weights every branch
  (same numbers; tests/search). On 2 CPU cores, "test" space, one-hot weights: a forward pass of
  8 64x64 images takes 24 ms with conditionals and 132 ms without, a gradient step of 2 images
  91 ms and 148 ms. The price is compile time: JAX linearizes each cond separately, so the
  gradient of the "test" space's 40 branches traces in ~10 s and compiles in 40-70 s.

- **Memory.** Differentiating a ``cond`` keeps the residuals of its true side whichever side ran
  (zeros stand in for them), so the gradient of the supernet holds every branch's intermediates
  at its largest widths: the full-size EdgeTPU search's train step needed 173 GiB of temporaries
  per v5e chip (batch 64 at 320x320). ``Supernet(remat=True)`` (``config.search.remat``, on in
  the TPU configs) rematerializes each branch's conditional: only its inputs are kept, and the
  backward pass recomputes the branch, one at a time (about one more forward pass of compute;
  the same numbers, tests/search).

``weights`` are traced, widths and branch sets are static: ``jax.jit`` compiles once for every
architecture and every mixture. Approximate: with soft weights the supernet mixes masks (the
TuNAS relaxation), which no standalone model computes; with one-hot weights it is the standalone
``SSDLite`` of ``space.decode`` (``supernet_weights.standalone_variables``; tests/search).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobiledet_jax.models import specs
from mobiledet_jax.models.blocks import INNER_NAMES
from mobiledet_jax.models.layers import (
    ACTIVATIONS,
    BACKBONE_NORM,
    ConvBias,
    depthwise_conv,
    he_normal,
    regular_conv,
)
from mobiledet_jax.models.ssdlite import SSDLiteHead, SSDLiteNeck
from mobiledet_jax.search.space import SKIP, SearchSpace
from mobiledet_jax.search.supernet_weights import (  # noqa: F401  (re-exported)
    NECK_PREFIX,
    REFERENCE_ANCHORS,
    SSD_SOURCES,
    LayerSlot,
    active_l2,
    branch_masks,
    branch_sizes,
    branch_weights,
    endpoint_masks,
    mask_head,
    mask_neck,
    one_hot_weights,
    plan,
    standalone_model,
    standalone_variables,
    stem_mask,
    uniform_weights,
)

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Modules.


class BatchStatNorm(nn.Module):
    """BatchNorm on batch statistics only (flax's two-pass formula, in its order); no state."""

    epsilon: float = BACKBONE_NORM.epsilon
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # at least float32, as flax
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(xf, axes)
        var = jnp.mean(jnp.square(xf - mean), axes)
        y = (xf - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)


class MaskedConvBN(nn.Module):
    """``layers.ConvBN``'s parameter layout; BN on batch statistics; output * channel mask."""

    features: int
    kernel_size: int
    stride: int = 1
    depthwise: bool = False
    activation: str = "relu6"
    epsilon: float = BACKBONE_NORM.epsilon
    dtype: Any = jnp.float32
    conv_form: str = "auto"

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        k, cin = self.kernel_size, x.shape[-1]
        if self.depthwise:
            kernel = self.param("kernel", he_normal, (k, k, 1, cin), jnp.float32)
            y = depthwise_conv(x, kernel.astype(x.dtype), self.stride, self.conv_form)
        else:
            kernel = self.param("kernel", he_normal, (k, k, cin, self.features), jnp.float32)
            y = regular_conv(x, kernel.astype(x.dtype), self.stride, self.conv_form)
        y = BatchStatNorm(self.epsilon, self.dtype, name="BatchNorm")(y)
        return ACTIVATIONS[self.activation](y) * mask.astype(y.dtype)


class MaskedSqueezeExcite(nn.Module):
    """``layers.SqueezeExcite`` (sigmoid gate) with a mask on its hidden width."""

    hidden: int
    activation: str
    conv_form: str = "auto"

    @nn.compact
    def __call__(self, x: Array, hidden_mask: Array) -> Array:
        h, w = x.shape[1], x.shape[2]
        s = nn.avg_pool(x, (h, w), strides=(h, w), padding="VALID")
        conv = functools.partial(ConvBias, kernel_init=he_normal, conv_form=self.conv_form)
        s = conv(self.hidden, 1, name="Conv")(s)
        s = ACTIVATIONS[self.activation](s) * hidden_mask.astype(s.dtype)
        s = conv(x.shape[-1], 1, name="Conv_1")(s)
        return x * jax.nn.sigmoid(s)


class Branch(nn.Module):
    """One (family, kernel) of a slot at its largest widths, inner names as ``models.blocks``."""

    family: str
    kernel: int
    stride: int
    sizes: tuple[tuple[str, int], ...]  # branch_sizes
    activation: str
    se: bool
    dtype: Any = jnp.float32
    conv_form: str = "auto"

    @nn.compact
    def __call__(self, x: Array, masks: dict[str, Array]) -> Array:
        size, act, k, s = dict(self.sizes), self.activation, self.kernel, self.stride
        conv = functools.partial(MaskedConvBN, dtype=self.dtype, conv_form=self.conv_form)
        if self.family == specs.TUCKER:
            h = conv(size["rank_in"], 1, activation=act, name="Conv")(x, masks["rank_in"])
            h = conv(size["inner"], k, s, activation=act, name="Conv_1")(h, masks["inner"])
            return conv(size["out"], 1, activation="linear", name="Conv_2")(h, masks["out"])
        expand, dw, se_name, project = INNER_NAMES["mobiledet"][self.family]
        h = x
        if self.family == specs.IBN:
            h = conv(size["inner"], 1, activation=act, name=expand)(h, masks["inner"])
        if self.family == specs.FUSED:
            h = conv(size["inner"], k, s, activation=act, name=expand)(h, masks["inner"])
        else:
            inner = masks["inner" if self.family == specs.IBN else "in"]
            h = conv(0, k, s, depthwise=True, activation=act, name=dw)(h, inner)
        if self.se:
            h = MaskedSqueezeExcite(size["se"], act, self.conv_form, name=se_name)(h, masks["se"])
        return conv(size["out"], 1, activation="linear", name=project)(h, masks["out"])


def _conditional_branch(branch: nn.Module, x, masks, wb, shape):
    """``branch(x, masks)`` where ``wb != 0``, zeros of ``shape`` where not (Flax's lifted cond)."""
    return nn.cond(
        wb != 0,
        lambda mdl, x, m: mdl(x, m),
        lambda mdl, x, m: jnp.zeros(shape, x.dtype),
        branch,
        x,
        masks,
        # params only: the branches would sow intermediates on one side alone
        variables="params",
    )


class SearchLayer(nn.Module):
    """A slot: ``sum_i w_i * branch_i(x)`` (+ x when residual), each branch under ``nn.cond``."""

    space: SearchSpace
    slot: LayerSlot
    dtype: Any = jnp.float32
    conv_form: str = "auto"
    conditional: bool = True
    remat: bool = False  # Supernet.remat

    @nn.compact
    def __call__(self, x: Array, weights: Array) -> Array:
        space, slot = self.space, self.slot
        masks = {f: branch_masks(space, slot, f, weights) for f in slot.families if f != SKIP}
        n, h, w, _ = x.shape
        total = None
        for fam, k, wb in branch_weights(space, slot, weights):
            sizes = branch_sizes(space, slot, fam)
            branch = Branch(
                fam, k, slot.stride, sizes, space.activation, space.se and fam != specs.TUCKER,
                self.dtype, self.conv_form, name=f"{fam}_k{k}",
            )  # fmt: skip
            shape = (n, -(-h // slot.stride), -(-w // slot.stride), dict(sizes)["out"])
            if self.is_initializing() or not self.conditional:
                y = branch(x, masks[fam])
            else:

                def run(mdl, x, m, wb, shape=shape):
                    return _conditional_branch(mdl, x, m, wb, shape)

                if self.remat:  # keep only the inputs; the backward pass recomputes the branch
                    run = nn.remat(run)
                y = run(branch, x, masks[fam], wb)
            y = wb.astype(y.dtype) * y
            total = y if total is None else total + y
        return total + x if slot.residual else total


class SupernetBackbone(nn.Module):
    """The stem and every slot; returns the endpoints (C1..C5) at their largest widths."""

    space: SearchSpace
    dtype: Any = jnp.float32
    conv_form: str = "auto"
    conditional: bool = True
    remat: bool = False  # Supernet.remat

    @nn.compact
    def __call__(self, x: Array, weights: Array) -> dict[str, Array]:
        p = plan(self.space)
        stem = self.space.skeleton[0]
        x = MaskedConvBN(
            max(p.stem_widths), 3, stem.stride, activation=self.space.activation,
            dtype=self.dtype, name="stem",
        )(x, stem_mask(self.space, weights))  # fmt: skip
        endpoints = {}
        for slot in p.slots:
            x = SearchLayer(
                self.space, slot, self.dtype, self.conv_form, self.conditional, self.remat,
                name=slot.name,
            )(x, weights)  # fmt: skip
            if slot.endpoint:
                endpoints[slot.endpoint] = x  # already zero beyond the active width
        return endpoints


def _init_fn(module: nn.Module, x) -> Any:
    """A param initializer: ``module.init(key, zeros like x, True)['params']`` (shapes only)."""
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
    zeros = lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    return lambda key: module.init(key, zeros(), True)["params"]


class Supernet(nn.Module):
    """Supernet SSDLite: ``__call__(images [-1, 1], weights [D, C_max])`` -> the outputs of
    ``models.ssdlite.SSDLite`` (``box_encodings``, ``class_logits``, ``feature_maps``,
    ``endpoints``; maps at their largest widths, zero beyond the active ones). ``train`` is
    accepted for symmetry: BatchNorm always uses batch statistics."""

    space: SearchSpace
    num_classes: int = 90
    anchors_per_location: tuple[int, ...] = REFERENCE_ANCHORS
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # layers.CONV_FORMS; export uses "conv"
    conditional: bool = True  # False: compute every branch and weight them
    # True: each branch's conditional is rematerialized (config.search.remat), see the docstring
    remat: bool = False

    @nn.compact
    def __call__(self, images: Array, weights: Array, train: bool = True) -> dict[str, Any]:
        del train
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got shape {images.shape}")
        p = plan(self.space)
        if tuple(weights.shape) != (p.num_decisions, p.max_choices):
            raise ValueError(
                f"weights must be [{p.num_decisions}, {p.max_choices}], got {weights.shape}"
            )
        weights = jnp.asarray(weights, jnp.float32)
        x = images.astype(self.dtype)
        endpoints = SupernetBackbone(
            self.space, self.dtype, self.conv_form, self.conditional, self.remat, name="backbone"
        )(x, weights)
        src1, src2 = SSD_SOURCES
        neck = SSDLiteNeck(NECK_PREFIX, 1.0, self.dtype, self.conv_form, parent=None)
        head = SSDLiteHead(
            self.num_classes, self.anchors_per_location, self.dtype, self.conv_form,
            parent=None,
        )  # fmt: skip
        masks = endpoint_masks(self.space, weights)
        # running averages are created, updated and dropped: BN on batch statistics only
        neck_p = mask_neck(self.param("neck", _init_fn(neck, endpoints[src2])), masks)
        extra, _ = neck.apply({"params": neck_p}, endpoints[src2], True, mutable=["batch_stats"])
        maps = [endpoints[src1], endpoints[src2], *extra]
        head_p = mask_head(self.param("head", _init_fn(head, maps)), masks)
        (boxes, logits), _ = head.apply({"params": head_p}, maps, True, mutable=["batch_stats"])
        return {
            "box_encodings": boxes.astype(jnp.float32),
            "class_logits": logits.astype(jnp.float32),
            "feature_maps": maps,
            "endpoints": endpoints,
        }
