"""The supernet (search/supernet.py): one-hot weights give the standalone SSDLite of the decoded
table, one compiled program serves every architecture, skip is the identity, masks zero the
inactive channels, and the active L2 is the standalone model's.

Two spaces: "tiny" (two layers a block: skips; ReLU6) and the "test" space with squeeze-excite and
hard-swish ("se": Tucker, SE in IBN / IBN-noexp / Fused). XLA compilation is nearly all of this
file's time and weights are data, so each program is compiled once (``_program``) and run once
per architecture (``_run``) for every test that reads it:

- ``step`` ("tiny", float32): the training gradient and the forward outputs; 20 sampled
  architectures and the uniform weights through it: one trace, one compile;
- ``forward`` (both spaces, float64): the equality tests, the skip / mask test, the L2 test;
- ``all_branches`` ("se", float64): ``Supernet(conditional=False)``, against ``forward``;
- ``step64`` and ``step64_remat`` ("tiny", float64): ``step``, and ``step`` with every branch
  rematerialized (``remat=True``);
- one standalone ``SSDLite`` per architecture of ``ARCHITECTURES`` (float64, with its L2).

Tiny shapes (34x34: C4 3x3, C5 2x2; batch 2), depthwise convs as convolutions
(``conv_form="conv"``: the same sums as the CPU's shifted form, and XLA compiles the
supernet's gradient twice as fast). The programs run a few times compile at LLVM -O0 (``ONCE``):
these tests check numbers and cache hits, not speed. The equality tests run in float64
(``jax.enable_x64``): with batch 2 the neck's 1x1 maps normalize over two values, which amplifies
float32 rounding (the ~1e-6 from summing over a max-width kernel's zero channels) to ~1e-1 by the
last map; in float64 the two models agree to ~1e-12, so any mask error (~1e-1) stands out.
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
SIZE = 34
FORM = "conv"
# LLVM -O0 for the programs run a few times: compiles ~2.5x faster than the default, runs ~3x
# slower (the gradient, run 21 times, keeps the default: at -O0 it runs ~10x slower)
ONCE = {"xla_backend_optimization_level": 0}
SPACES = {
    "tiny": space_lib.get_space("tiny"),
    "se": dataclasses.replace(
        space_lib.get_space("test"), name="test_se", se=True, activation="hard_swish"
    ),
}
KINDS = {
    "step": np.float32,
    "step64": np.float64,
    "step64_remat": np.float64,
    "forward": np.float64,
    "all_branches": np.float64,
}

ARCHITECTURES = [
    # Tucker in b3, SE in all three SE families
    ("se", 0, {"b1.l1.family": "ibn_noexp", "b2.l1.family": "ibn", "b3.l1.family": "tucker",
               "b4.l1.family": "fused"}),
    ("se", 1, {"b1.l1.family": "tucker", "b5.l1.family": "ibn"}),  # Tucker in b1
    ("tiny", 0, {"b3.l2.family": "skip", "b4.l2.family": "ibn"}),  # also the skip / mask test
    ("tiny", 1, {"b2.l2.family": "fused", "b5.l2.family": "skip", "b6.l2.family": "ibn"}),
]  # fmt: skip
CONDITIONAL_SEED = 5  # a random "se" architecture for the conditional / all-branches test


def _images(dtype) -> np.ndarray:
    return np.random.default_rng(7).uniform(-1.0, 1.0, (2, SIZE, SIZE, 3)).astype(dtype)


def _arch(name: str, seed: int, force: dict | None = None) -> tuple[int, ...]:
    """A random architecture with some decisions forced (``{"b3.l2.family": "skip"}``)."""
    space = SPACES[name]
    idx = space_lib.random_indices(space, np.random.default_rng(seed))
    decs, pos = space_lib.decisions(space), space_lib.decision_index(space)
    for key, choice in (force or {}).items():
        idx[pos[key]] = decs[pos[key]].choices.index(choice)
    # a forced family activates its sub-decisions (index 0 is valid); clear the inactive ones
    return tuple(int(i) for i in np.where(space_lib.active_mask(space, idx), idx, 0))


def _weights(name: str, arch: tuple | None) -> np.ndarray:
    """One-hot weights of an architecture; ``None``: the uniform weights."""
    space = SPACES[name]
    return sn.uniform_weights(space) if arch is None else sn.one_hot_weights(space, arch)


@pytest.fixture(scope="module", autouse=True)
def _free_caches():
    """The cached parameters, programs and results (some hundred MB) live for this module only."""
    yield
    for cached in (_params, _params_as, _program, _run, _standalone):
        cached.cache_clear()


@functools.cache
def _params(name: str) -> dict:
    """Random supernet parameters (numpy float64 holding float32 values; shapes from
    ``eval_shape``, no compiled init): kernels LeCun-normal, BN scales 1 +- 0.1 and BN / conv
    biases ~ 0.1 (a masked channel's BN output is its bias, so nonzero biases make a missing mask
    visible)."""
    space = SPACES[name]
    net = sn.Supernet(space, NUM_CLASSES, conv_form=FORM)
    shapes = jax.eval_shape(
        net.init, jax.random.key(0), _images(np.float32), sn.uniform_weights(space)
    )
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
        return v.astype(np.float32).astype(np.float64)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


@functools.cache
def _params_as(name: str, dtype) -> dict:
    """``_params`` on the device in ``dtype`` (float64 under ``enable_x64``), put there once."""
    with jax.enable_x64(dtype == np.float64):
        return jax.device_put(jax.tree.map(lambda a: a.astype(dtype), _params(name)))


def _search_layers(module, method: str) -> bool:  # capture the slot outputs only
    return isinstance(module, sn.SearchLayer) and method == "__call__"


@functools.cache
def _program(name: str, kind: str):
    """(jitted fn(params, images, weights) -> dict, trace log) of one of a space's programs
    (``KINDS``): the supernet's ``outputs``; ``forward`` adds ``layers`` (slot name -> SearchLayer
    output) and ``active_l2``, ``step`` adds ``active_l2`` and ``grads`` (the gradient of
    ``mean(boxes**2) + mean(logits**2)``)."""
    space, traces = SPACES[name], []
    dtype = jnp.dtype(KINDS[kind])
    net = sn.Supernet(
        space, NUM_CLASSES, dtype=dtype, conv_form=FORM, conditional=kind != "all_branches",
        remat=kind.endswith("remat"),
    )  # fmt: skip

    def forward(p, x, w):
        traces.append(1)
        if kind == "forward":  # branches run under nn.cond and are not captured; SearchLayer is
            out, state = net.apply(
                {"params": p}, x, w, capture_intermediates=_search_layers, mutable="intermediates"
            )
            layers = {k: v["__call__"][0] for k, v in state["intermediates"]["backbone"].items()}
            aux = {"layers": layers, "active_l2": sn.active_l2(p, w, space)}
        else:
            out, aux = net.apply({"params": p}, x, w), {}
        loss = jnp.mean(out["box_encodings"] ** 2) + jnp.mean(out["class_logits"] ** 2)
        return loss, {"outputs": out, **aux}

    if not kind.startswith("step"):
        return jax.jit(lambda p, x, w: forward(p, x, w)[1], compiler_options=ONCE), traces

    def step(p, x, w):
        grads, aux = jax.grad(forward, has_aux=True)(p, x, w)
        return {"grads": grads, "active_l2": sn.active_l2(p, w, space), **aux}  # not linearized

    return jax.jit(step), traces


def _call(name: str, kind: str, arch: tuple | None) -> dict:
    fn, _ = _program(name, kind)
    dtype = KINDS[kind]
    with jax.enable_x64(dtype == np.float64):
        out = fn(_params_as(name, dtype), _images(dtype), _weights(name, arch))
        return jax.device_get(out)


@functools.cache
def _run(name: str, kind: str, arch: tuple | None) -> dict:
    """``_call``, once per (space, program, architecture) for all the tests."""
    return _call(name, kind, arch)


@functools.cache
def _standalone(name: str, arch: tuple) -> dict:
    """The standalone SSDLite's outputs (train mode) and ``l2_regularization``, on the supernet's
    parameters sliced by ``standalone_variables`` (in the same float64 program)."""
    space = SPACES[name]
    model = sn.standalone_model(space, arch, NUM_CLASSES, dtype=jnp.float64, conv_form=FORM)

    def fn(p, x):
        variables = sn.standalone_variables(p, space, arch, NUM_CLASSES)
        out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return {"outputs": out, "l2": l2_regularization(variables["params"], 1.0)}

    with jax.enable_x64(True):
        out = jax.jit(fn, compiler_options=ONCE)(_params_as(name, np.float64), _images(np.float64))
        return jax.device_get(out)


@pytest.mark.parametrize("name,seed,force", ARCHITECTURES)
def test_one_hot_supernet_is_the_standalone_model(name, seed, force):
    space, arch = SPACES[name], _arch(name, seed, force)
    spec = space_lib.decode(space, arch)
    if name == "tiny":
        assert len(spec.blocks) < 1 + sum(b.max_layers for b in space.skeleton[1:])  # skipped
    if specs.TUCKER in force.values():
        assert any(b.block == specs.TUCKER for b in spec.blocks)
    if name == "se" and seed == 0:
        assert {b.block for b in spec.blocks if b.se} >= {"ibn_noexp", "ibn", "fused"}
    out, ref = _run(name, "forward", arch)["outputs"], _standalone(name, arch)["outputs"]
    for key in ("box_encodings", "class_logits"):
        assert out[key].shape == ref[key].shape
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
    for end in ("C4", "C5"):  # the first k channels are the standalone map, the rest zero
        a, b = np.asarray(out["endpoints"][end]), np.asarray(ref["endpoints"][end])
        k = b.shape[-1]
        np.testing.assert_allclose(a[..., :k], b, rtol=1e-5, atol=1e-5, err_msg=end)
        assert not np.any(a[..., k:]), end


def test_one_compiled_program_for_every_architecture():
    name, space = "tiny", SPACES["tiny"]
    rng = np.random.default_rng(123)
    archs = [tuple(space_lib.random_indices(space, rng)) for _ in range(20)]
    for i, arch in enumerate([*archs, None]):  # None: the uniform weights
        res = _run(name, "step", None) if arch is None else _call(name, "step", arch)
        assert np.all(np.isfinite(res["outputs"]["class_logits"]))
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(res["grads"]))
        # one-hot: in every slot the branches not chosen get no gradient, the chosen one does
        if i == 0:
            for slot in sn.plan(space).slots:
                fam = slot.families[arch[slot.family_decision]]
                chosen = None  # skip: no branch
                if fam != space_lib.SKIP:
                    chosen = f"{fam}_k{space.kernels[arch[slot.sub(fam, 'kernel')]]}"
                for branch, leaves in res["grads"]["backbone"][slot.name].items():
                    norm = sum(float(np.sum(np.abs(v))) for v in jax.tree.leaves(leaves))
                    assert (norm > 0) == (branch == chosen), (slot.name, branch)
    # the forward programs: this file's architectures and the uniform weights, one compile each
    forward = [(n, _arch(n, s, f)) for n, s, f in ARCHITECTURES]
    forward += [("se", _arch("se", CONDITIONAL_SEED)), ("se", None)]
    for n, arch in forward:
        assert np.all(np.isfinite(_run(n, "forward", arch)["outputs"]["class_logits"])), (n, arch)
    for n, kind in [("tiny", "step"), ("tiny", "forward"), ("se", "forward")]:
        fn, traces = _program(n, kind)
        assert fn._cache_size() == 1, (n, kind)
        assert len(traces) == 1, (n, kind)


def test_skip_is_identity_and_masks_zero_inactive_channels():
    name, seed, force = ARCHITECTURES[2]
    space, arch = SPACES[name], _arch(name, seed, force)
    res = _run(name, "forward", arch)
    layers, out = res["layers"], res["outputs"]
    assert set(layers) == {s.name for s in sn.plan(space).slots}
    np.testing.assert_array_equal(layers["b3_l2"], layers["b3_l1"])  # skip: the identity
    assert not np.array_equal(layers["b4_l2"], layers["b4_l1"])
    pos = space_lib.decision_index(space)
    for slot in sn.plan(space).slots:  # every layer output: zero from its block's width on
        width = slot.cout_widths[arch[pos[f"{slot.block}.filters"]]]
        y = np.asarray(layers[slot.name])
        assert not np.any(y[..., width:]) and np.any(y[..., :width]), slot.name
    spec = space_lib.decode(space, arch)
    ends = {b.endpoint: b.out for b in spec.blocks if b.endpoint}
    for end in ("C4", "C5"):
        y = np.asarray(out["endpoints"][end])
        assert y.shape[-1] == max(space.widths(space.skeleton[5 if end == "C4" else 7]))
        assert not np.any(y[..., ends[end] :]) and np.any(y[..., : ends[end]]), end
    # soft filter rows give soft masks: uniform weights, the widest channels at 1/3
    m = sn.endpoint_masks(space, sn.uniform_weights(space))["C5"]
    np.testing.assert_allclose(np.unique(np.asarray(m)), [1 / 3, 2 / 3, 1.0], rtol=1e-6)


def test_conditional_and_all_branches_agree():
    for arch in (_arch("se", CONDITIONAL_SEED), None):  # one-hot, then uniform weights
        a = _run("se", "forward", arch)["outputs"]
        b = _call("se", "all_branches", arch)["outputs"]
        for key in ("box_encodings", "class_logits"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name,seed,force", ARCHITECTURES)
def test_active_l2_is_the_standalone_l2(name, seed, force):
    arch = _arch(name, seed, force)
    expected = float(_standalone(name, arch)["l2"])
    np.testing.assert_allclose(float(_run(name, "forward", arch)["active_l2"]), expected, rtol=1e-5)
    # soft weights: a weighted fraction of the kernels (mixed masks, branch weights below 1); on
    # the program the other tests run the uniform weights through
    uniform = _run(name, "step" if name == "tiny" else "forward", None)["active_l2"]
    leaves = jax.tree_util.tree_flatten_with_path(_params(name))[0]
    full = 0.5 * sum(np.sum(np.square(v)) for path, v in leaves if path[-1].key == "kernel")
    assert 0 < float(uniform) < full  # full: l2_regularization of every supernet kernel


def test_rematerialized_branches_give_the_same_gradient():
    """``Supernet(remat=True)`` (the TPU configs) recomputes each branch in the backward pass:
    the same outputs and gradients as keeping its intermediates, one-hot and mixed weights."""
    arch = _arch("tiny", 1, ARCHITECTURES[3][2])
    for weights in (arch, None):
        kept = _call("tiny", "step64", weights)
        remat = _call("tiny", "step64_remat", weights)
        for key in ("box_encodings", "class_logits"):
            np.testing.assert_allclose(
                remat["outputs"][key], kept["outputs"][key], rtol=1e-9, atol=1e-9
            )
        flat_k = jax.tree_util.tree_flatten_with_path(kept["grads"])[0]
        flat_r = jax.tree_util.tree_leaves(remat["grads"])
        assert len(flat_k) == len(flat_r)
        for (path, g), r in zip(flat_k, flat_r, strict=True):
            scale = float(np.max(np.abs(g))) + 1e-12
            np.testing.assert_allclose(r, g, rtol=1e-7, atol=1e-9 * scale, err_msg=str(path))
