"""The supernet (search/supernet.py): one-hot weights give the standalone SSDLite of the decoded
table, one compiled program serves every architecture, skip is the identity, masks zero the
inactive channels, and the active L2 is the standalone model's.

Two spaces: "tiny" (two layers a block: skips) and the "test" space with squeeze-excite and
hard-swish (Tucker, SE in IBN / IBN-noexp / Fused). XLA compilation is nearly all of this file's
time, and weights are data, so each space's supernet is compiled once and serves every test:
"tiny" as one forward + gradient program (outputs, the SearchLayer outputs, the active and full
L2, the parameter gradient), the SE space as one forward program (outputs, L2s); only the
all-branches supernet and the standalone models (one per architecture) compile on their own.
Tiny shapes (40x40: C4 3x3, C5 2x2; batch 2), depthwise convs as convolutions
(``depthwise_form="conv"``: the same sums as the CPU's shifted form, and XLA compiles the
supernet's gradient twice as fast), the forward programs compiled at LLVM -O0 (``FAST``: these
tests check numbers and cache hits, not speed). Everything runs in float64 (``jax.enable_x64``):
with batch 2 the neck's 1x1 maps normalize over two values, which amplifies float32 rounding
(the ~1e-6 from summing over a max-width kernel's zero channels) to ~1e-1 by the last map; in
float64 the two models agree to ~1e-12, so any mask error (~1e-1) stands out.
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
SIZE = int(__import__("os").environ.get("T_SIZE", 34))
FORM = "conv"
DTYPE = jnp.float64
import os
_o = lambda k, d: {} if os.environ.get(k, d) == "d" else {"xla_backend_optimization_level": int(os.environ.get(k, d))}
ONCE = _o("T_ONCE", "0")
MANY = _o("T_MANY", "1")
SPACES = {
    "tiny": space_lib.get_space("tiny"),
    "se": dataclasses.replace(
        space_lib.get_space("test"), name="test_se", se=True, activation="hard_swish"
    ),
}


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _images() -> jax.Array:
    return jax.random.uniform(jax.random.key(7), (2, SIZE, SIZE, 3), DTYPE, -1.0, 1.0)


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


def _uniform(space) -> jax.Array:
    return jnp.asarray(sn.uniform_weights(space))


@functools.cache
def _params(name: str) -> dict:
    """Random float64 supernet parameters (shapes from ``eval_shape``, no compiled init):
    kernels LeCun-normal, BN scales 1 +- 0.1 and BN / conv biases ~ 0.1 (a masked channel's BN
    output is its bias, so nonzero biases make a missing mask visible)."""
    net = sn.Supernet(SPACES[name], NUM_CLASSES, dtype=DTYPE, depthwise_form=FORM)
    w = sn.uniform_weights(SPACES[name])
    shapes = jax.eval_shape(net.init, jax.random.key(0), _images(), w)
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
        return jnp.asarray(v.astype(np.float32), DTYPE)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def _search_layers(module, method: str) -> bool:  # capture the slot outputs only
    return isinstance(module, sn.SearchLayer) and method == "__call__"


@functools.cache
def _program(name: str, conditional: bool = True):
    """(jitted fn(params, images, weights), trace log) of a space's supernet. The fn returns
    ``outputs`` (the supernet's), ``layers`` (slot name -> SearchLayer output), ``active_l2``
    and ``full_l2`` (``l2_regularization`` of every supernet kernel); "tiny" adds ``grads``,
    the gradient of ``mean(boxes**2) + mean(logits**2)`` in the same program."""
    space, traces = SPACES[name], []
    net = sn.Supernet(space, NUM_CLASSES, dtype=DTYPE, depthwise_form=FORM, conditional=conditional)

    def forward(p, x, w):
        traces.append(1)
        out, state = net.apply(
            {"params": p}, x, w, capture_intermediates=_search_layers, mutable=["intermediates"]
        )  # branches run under nn.cond and are not captured; SearchLayer runs outside
        layers = {k: v["__call__"][0] for k, v in state["intermediates"]["backbone"].items()}
        aux = {
            "outputs": out,
            "layers": layers,
            "active_l2": sn.active_l2(p, w, space),
            "full_l2": l2_regularization(p, 1.0),
        }
        return jnp.mean(out["box_encodings"] ** 2) + jnp.mean(out["class_logits"] ** 2), aux

    if name != "tiny":
        return jax.jit(lambda p, x, w: forward(p, x, w)[1], compiler_options=MANY if conditional else ONCE), traces

    def step(p, x, w):
        grads, aux = jax.grad(forward, has_aux=True)(p, x, w)
        return {"grads": grads, **aux}

    return jax.jit(step, compiler_options=MANY), traces  # not FAST: at -O0 the gradient runs ~5x slower


@functools.cache
def _run(name: str, arch: tuple | None) -> dict:
    """The supernet program on an architecture's one-hot weights (``None``: uniform weights)."""
    space, (fn, _) = SPACES[name], _program(name)
    w = _uniform(space) if arch is None else _weights(space, np.asarray(arch))
    return jax.device_get(fn(_params(name), _images(), w))


@functools.cache
def _standalone(name: str, arch: tuple) -> dict:
    """The standalone SSDLite's outputs (train mode) and ``l2_regularization``, on the
    supernet's parameters sliced by ``standalone_variables``."""
    space, idx = SPACES[name], np.asarray(arch)
    model = sn.standalone_model(space, idx, NUM_CLASSES, dtype=DTYPE, depthwise_form=FORM)
    variables = sn.standalone_variables(_params(name), space, idx, NUM_CLASSES)

    def fn(v, x):
        out, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        return {"outputs": out, "l2": l2_regularization(v["params"], 1.0)}

    return jax.device_get(jax.jit(fn, compiler_options=ONCE)(variables, _images()))


ARCHITECTURES = [
    # Tucker in b3 and SE in all three SE families
    ("se", 0, {"b1.l1.family": "ibn_noexp", "b2.l1.family": "ibn", "b3.l1.family": "tucker",
               "b4.l1.family": "fused"}),
    ("se", 1, {"b1.l1.family": "tucker", "b5.l1.family": "ibn"}),  # Tucker on the stem
    ("tiny", 0, {"b3.l2.family": "skip"}),
    ("tiny", 1, {"b2.l2.family": "fused", "b5.l2.family": "skip", "b6.l2.family": "ibn"}),
]  # fmt: skip


def _arch(name: str, seed: int, force: dict) -> tuple:
    return tuple(int(i) for i in _indices(SPACES[name], seed, force))


@pytest.mark.parametrize("name,seed,force", ARCHITECTURES)
def test_one_hot_supernet_is_the_standalone_model(name, seed, force):
    space, arch = SPACES[name], _arch(name, seed, force)
    spec = space_lib.decode(space, np.asarray(arch))
    if name == "tiny":
        assert len(spec.blocks) < 1 + sum(b.max_layers for b in space.skeleton[1:])  # skipped
    if "tucker" in force.values():
        assert any(b.block == specs.TUCKER for b in spec.blocks)
    if seed == 0 and name == "se":
        assert {b.block for b in spec.blocks if b.se} >= {"ibn_noexp", "ibn", "fused"}
    out, ref = _run(name, arch)["outputs"], _standalone(name, arch)["outputs"]
    for key in ("box_encodings", "class_logits"):
        assert out[key].shape == ref[key].shape
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
    for end in ("C4", "C5"):  # the first k channels are the standalone map, the rest zero
        a, b = np.asarray(out["endpoints"][end]), np.asarray(ref["endpoints"][end])
        k = b.shape[-1]
        np.testing.assert_allclose(a[..., :k], b, rtol=1e-5, atol=1e-5, err_msg=end)
        assert not np.any(a[..., k:]), end


def test_one_compiled_program_for_every_architecture():
    """20 sampled architectures and the uniform weights through each space's program (the
    "tiny" one with its gradient): one trace, one compile each."""
    x = _images()
    for name in SPACES:
        space, (fn, traces) = SPACES[name], _program(name)
        params = _params(name)
        rng = np.random.default_rng(123)
        archs = [space_lib.random_indices(space, rng) for _ in range(20)]
        weights = [_weights(space, idx) for idx in archs] + [None]
        for i, w in enumerate(weights):
            res = _run(name, None) if w is None else jax.device_get(fn(params, x, w))
            assert np.all(np.isfinite(res["outputs"]["class_logits"])), name
            if name != "tiny":
                continue
            assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(res["grads"]))
            if i == 0:  # one-hot: the branches not chosen get no gradient, the chosen ones do
                idx = archs[0]
                for slot in sn.plan(space).slots:
                    fam = slot.families[idx[slot.family_decision]]
                    chosen = None  # skip: no branch
                    if fam != space_lib.SKIP:
                        chosen = f"{fam}_k{space.kernels[idx[slot.sub(fam, 'kernel')]]}"
                    for branch, leaves in res["grads"]["backbone"][slot.name].items():
                        norm = sum(float(np.sum(np.abs(v))) for v in jax.tree.leaves(leaves))
                        assert (norm > 0) == (branch == chosen), (slot.name, branch)
        assert fn._cache_size() == 1, name
        assert len(traces) == 1, name


def test_skip_is_identity_and_masks_zero_inactive_channels():
    space = SPACES["tiny"]
    arch = _arch("tiny", 0, {"b3.l2.family": "skip", "b4.l2.family": "ibn"})
    idx = np.asarray(arch)
    res = _run("tiny", arch)
    layers, out = res["layers"], res["outputs"]
    assert set(layers) == {s.name for s in sn.plan(space).slots}
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
    space = SPACES["se"]
    every, _ = _program("se", conditional=False)
    for arch in (_arch("se", 5, {}), None):
        w = _uniform(space) if arch is None else _weights(space, np.asarray(arch))
        a = _run("se", arch)["outputs"]
        b = jax.device_get(every(_params("se"), _images(), w))["outputs"]
        for key in ("box_encodings", "class_logits"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name,seed,force", ARCHITECTURES)
def test_active_l2_is_the_standalone_l2(name, seed, force):
    arch = _arch(name, seed, force)
    expected = float(_standalone(name, arch)["l2"])
    np.testing.assert_allclose(float(_run(name, arch)["active_l2"]), expected, rtol=1e-5)
    # soft weights: a weighted fraction of the kernels (mixed masks, branch weights below 1)
    uniform = _run(name, None)
    assert 0 < float(uniform["active_l2"]) < float(uniform["full_l2"])
