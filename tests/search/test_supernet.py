"""The supernet (search/supernet.py): one-hot weights give the standalone SSDLite of the decoded
table, one compiled program serves every architecture, skip is the identity, masks zero the
inactive channels, and the active L2 is the standalone model's.

Tiny shapes (64x64, batch 2), depthwise convs as convolutions (``depthwise_form="conv"``: the
same sums as the CPU's shifted form, and XLA compiles the supernet's gradient twice as fast). The equality tests run in float64 (``jax.enable_x64``): with batch 2
the neck's 1x1 maps normalize over two values, which amplifies float32 rounding (the ~1e-6 from
summing over a max-width kernel's zero channels) to ~1e-1 by the last map; in float64 the two
models agree to ~1e-12, so any mask error (~1e-1) stands out.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax.detection.losses import l2_regularization
from mobiledet_jax.models import specs
from mobiledet_jax.search import space as space_lib
from mobiledet_jax.search import supernet as sn

NUM_CLASSES = 3
SIZE = 64
FORM = "conv"
SPACES = {
    "test": space_lib.get_space("test"),
    "tiny": space_lib.get_space("tiny"),
    "se": dataclasses.replace(
        space_lib.get_space("test"), name="test_se", se=True, activation="hard_swish"
    ),
}


def _images(dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(jax.random.key(7), (2, SIZE, SIZE, 3), dtype, -1.0, 1.0)


def _indices(space, seed: int, force: dict | None = None) -> np.ndarray:
    """A random architecture with some decisions forced (``{"b3.l2.family": "skip"}``)."""
    idx = space_lib.random_indices(space, np.random.default_rng(seed))
    decs, pos = space_lib.decisions(space), space_lib.decision_index(space)
    for name, choice in (force or {}).items():
        idx[pos[name]] = decs[pos[name]].choices.index(choice)
    # a forced family activates its sub-decisions (index 0 is valid); clear the inactive ones
    return np.where(space_lib.active_mask(space, idx), idx, 0)


def _weights(space, idx) -> jax.Array:
    return jnp.asarray(sn.one_hot_weights(space, idx))


@functools.cache
def _case(name: str, x64: bool):
    """(supernet, params, jitted apply) with random parameters: kernels LeCun-normal, BN scales
    1 +- 0.1 and BN / conv biases ~ 0.1 (a masked channel's BN output is its bias, so nonzero
    biases make a missing mask visible)."""
    space = SPACES[name]
    dtype = jnp.float64 if x64 else jnp.float32
    net = sn.Supernet(space, NUM_CLASSES, dtype=dtype, depthwise_form=FORM)
    shapes = jax.eval_shape(net.init, jax.random.key(0), _images(dtype), sn.uniform_weights(space))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        shape, kind = leaf.shape, path[-1].key
        if kind == "kernel":
            fan_in = int(np.prod(shape[:-1])) if shape[2] != 1 else shape[0] * shape[1]
            v = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif kind == "scale":
            v = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            v = 0.1 * rng.normal(size=shape)
        return jnp.asarray(v.astype(np.float32), dtype)

    params = jax.tree_util.tree_map_with_path(fill, shapes["params"])
    apply = jax.jit(lambda p, x, w: net.apply({"params": p}, x, w, train=True))
    return net, params, apply


def _standalone(name: str, params, idx, dtype):
    space = SPACES[name]
    model = sn.standalone_model(space, idx, NUM_CLASSES, dtype=dtype, depthwise_form=FORM)
    variables = sn.standalone_variables(params, space, idx, NUM_CLASSES)
    out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, _images(dtype)
    )
    return model, variables, out


ARCHITECTURES = [
    ("test", 0, {"b3.l1.family": "tucker"}),
    ("test", 1, {"b1.l1.family": "tucker", "b5.l1.family": "ibn"}),
    ("test", 2, {}),
    ("tiny", 0, {"b3.l2.family": "skip"}),
    ("tiny", 1, {"b2.l2.family": "fused", "b5.l2.family": "skip", "b6.l2.family": "ibn"}),
    ("tiny", 2, {}),
    ("se", 0, {"b1.l1.family": "ibn_noexp", "b2.l1.family": "ibn", "b3.l1.family": "fused"}),
]


@pytest.mark.parametrize("name,seed,force", ARCHITECTURES)
def test_one_hot_supernet_is_the_standalone_model(name, seed, force):
    space = SPACES[name]
    idx = _indices(space, seed, force)
    spec = space_lib.decode(space, idx)
    if name == "tiny" and seed < 2:
        assert len(spec.blocks) < 1 + sum(b.max_layers for b in space.skeleton[1:])  # skipped
    if force.get("b3.l1.family") == "tucker":
        assert any(b.block == specs.TUCKER for b in spec.blocks)
    if name == "se":
        assert {b.block for b in spec.blocks if b.se} >= {"ibn_noexp", "ibn", "fused"}
    with jax.enable_x64(True):
        _, params, apply = _case(name, True)
        out = apply(params, _images(jnp.float64), _weights(space, idx))
        _, _, ref = _standalone(name, params, idx, jnp.float64)
        for key in ("box_encodings", "class_logits"):
            assert out[key].shape == ref[key].shape
            np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
        for end in ("C4", "C5"):  # the first k channels are the standalone map, the rest zero
            a, b = np.asarray(out["endpoints"][end]), np.asarray(ref["endpoints"][end])
            k = b.shape[-1]
            np.testing.assert_allclose(a[..., :k], b, rtol=1e-5, atol=1e-5, err_msg=end)
            assert not np.any(a[..., k:]), end


@pytest.mark.slow  # the gradient of 40 conditional branches: ~40 s of XLA compile on 2 cores
def test_one_compiled_program_for_every_architecture():
    space = SPACES["test"]
    net, params, apply = _case("test", False)
    traces = []

    def loss(p, x, w):
        traces.append(1)
        out = net.apply({"params": p}, x, w)
        return jnp.mean(out["box_encodings"] ** 2) + jnp.mean(out["class_logits"] ** 2)

    grad = jax.jit(jax.grad(loss))
    rng = np.random.default_rng(123)
    archs = [space_lib.random_indices(space, rng) for _ in range(20)]
    weights = [_weights(space, idx) for idx in archs] + [jnp.asarray(sn.uniform_weights(space))]
    x = _images()
    for i, w in enumerate(weights):
        out = apply(params, x, w)
        g = grad(params, x, w)
        assert np.all(np.isfinite(out["class_logits"]))
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))
        if i == 0:  # one-hot: the branches not chosen get no gradient, the chosen ones do
            fam_d = sn.plan(space).slots[2]  # b3_l1
            fam = fam_d.families[archs[0][fam_d.family_decision]]
            k = space.kernels[archs[0][fam_d.sub(fam, "kernel")]]
            for branch, leaves in g["backbone"][fam_d.name].items():
                norm = sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(leaves))
                assert (norm > 0) == (branch == f"{fam}_k{k}"), branch
    assert apply._cache_size() == 1
    assert grad._cache_size() == 1
    assert len(traces) == 1


def test_skip_is_identity_and_masks_zero_inactive_channels():
    space = SPACES["tiny"]
    net, params, _ = _case("tiny", False)
    idx = _indices(space, 0, {"b3.l2.family": "skip", "b4.l2.family": "ibn"})
    w = _weights(space, idx)
    capture = jax.jit(
        lambda p, x, w: net.apply(
            {"params": p},
            x,
            w,
            capture_intermediates=True,  # branches run under nn.cond and are not captured
            mutable=["intermediates"],
        )
    )
    out, state = capture(params, _images(), w)
    captured = state["intermediates"]["backbone"]
    layers = {s.name: captured[s.name]["__call__"][0] for s in sn.plan(space).slots}
    np.testing.assert_array_equal(layers["b3_l2"], layers["b3_l1"])  # skip: the identity
    assert not np.array_equal(layers["b4_l2"], layers["b4_l1"])
    pos = space_lib.decision_index(space)
    for slot in sn.plan(space).slots:  # every layer output: zero from its block's width on
        width = slot.cout_widths[idx[pos[f"{slot.block}.filters"]]]
        y = np.asarray(layers[slot.name])
        assert not np.any(y[..., width:]) and np.any(y[..., :width]), slot.name
    spec = space_lib.decode(space, idx)
    ends = {b.endpoint: b.out for b in spec.blocks if b.endpoint}
    for end in ("C4", "C5"):
        y = np.asarray(out["endpoints"][end])
        assert y.shape[-1] == max(space.widths(space.skeleton[5 if end == "C4" else 7]))
        assert not np.any(y[..., ends[end] :]) and np.any(y[..., : ends[end]]), end
    # soft filter rows give soft masks: uniform weights, the widest channels at 1/3
    m = sn.endpoint_masks(space, sn.uniform_weights(space))["C5"]
    np.testing.assert_allclose(np.unique(np.asarray(m)), [1 / 3, 2 / 3, 1.0], rtol=1e-6)


def test_conditional_and_all_branches_agree():
    space = SPACES["test"]
    net, params, apply = _case("test", False)
    every = sn.Supernet(space, NUM_CLASSES, depthwise_form=FORM, conditional=False)
    apply_every = jax.jit(lambda p, x, w: every.apply({"params": p}, x, w))
    x = _images()
    for w in (_weights(space, _indices(space, 5)), jnp.asarray(sn.uniform_weights(space))):
        a = apply(params, x, w)["class_logits"]
        b = apply_every(params, x, w)["class_logits"]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,seed,force", [ARCHITECTURES[0], ARCHITECTURES[3], ARCHITECTURES[6]])
def test_active_l2_is_the_standalone_l2(name, seed, force):
    space = SPACES[name]
    _, params, _ = _case(name, False)
    idx = _indices(space, seed, force)
    variables = sn.standalone_variables(params, space, idx, NUM_CLASSES)
    full_l2 = jax.jit(lambda p: l2_regularization(p, 1.0))  # eagerly: a compile per shape
    expected = float(full_l2(variables["params"]))
    l2 = jax.jit(sn.active_l2, static_argnums=2)
    np.testing.assert_allclose(float(l2(params, _weights(space, idx), space)), expected, rtol=1e-5)
    # soft weights: a weighted fraction of the kernels (mixed masks, branch weights below 1)
    uniform = float(l2(params, jnp.asarray(sn.uniform_weights(space)), space))
    assert 0 < uniform < float(full_l2(params))
