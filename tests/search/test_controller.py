"""The REINFORCE search controller: rewards, schedules, baseline, hierarchy, sampling, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax.search import controller as C
from mobiledet_jax.search import space
from mobiledet_jax.search.space import Decision

# A small hand-made space: a width, a family with two sub-decision sets, a grandchild (a.l1.y.k.r_in
# is active only when family y and kernel 7 are chosen), and a second independent family.
DECS = (
    Decision("a.filters", (8, 16, 24)),
    Decision("a.l1.family", ("x", "y", "z")),
    Decision("a.l1.x.kernel", (3, 5), 1, 0),
    Decision("a.l1.y.kernel", (3, 5, 7), 1, 1),
    Decision("a.l1.y.expansion", (4.0, 8.0), 1, 1),
    Decision("a.l1.y.k.r_in", (0.25, 0.75), 3, 2),
    Decision("b.l1.family", ("x", "y")),
)
SPEC = C.make_spec(DECS)
BEST = np.array([2, 1, 1, 2, 0, 1, 0])  # decision 2 (family x's kernel) is off the best path


def _lsm(v):
    v = np.asarray(v, np.float64)
    return v - np.log(np.sum(np.exp(v - v.max()))) - v.max()


def test_spec_of_the_spaces():
    assert SPEC.num_choices == (3, 3, 2, 3, 2, 2, 2) and SPEC.depth == 2
    assert SPEC.valid.shape == (7, 3) and SPEC.valid.sum() == 17
    assert SPEC.op_tagged == (False, True, True, True, True, True, True)
    assert SPEC.filters_tagged == (True,) + (False,) * 6 and SPEC.largest[0] == 2
    spec = C.make_spec(space.get_space("test"))
    assert spec.num_decisions == len(space.decisions(space.get_space("test"))) and spec.depth == 1
    assert hash(spec) == hash(C.make_spec(space.get_space("test")))
    with pytest.raises(ValueError, match="bad parent"):
        C.make_spec((Decision("c", (1, 2), 1, 0), Decision("p", (1, 2))))


def test_rewards_against_hand_values():
    q, c0, beta = 0.8, 10.0, -0.07
    assert float(C.reward("mnas", q, 20.0, c0, beta)) == pytest.approx(0.8 * 2**-0.07, rel=1e-6)
    assert float(C.reward("abs", q, 20.0, c0, beta)) == pytest.approx(0.8 - 0.07, rel=1e-6)
    assert float(C.reward("mnas_hard", q, 20.0, c0, beta)) == pytest.approx(0.8 * 2**-0.07)
    assert float(C.reward("mnas_hard", q, 5.0, c0, beta)) == pytest.approx(0.8)
    assert float(C.reward("mnas", q, 5.0, c0, beta)) == pytest.approx(0.8 * 0.5**-0.07)
    assert float(C.reward("abs", q, 5.0, c0, beta)) == pytest.approx(0.8 - 0.07 * 0.5)
    with pytest.raises(ValueError, match="unknown reward"):
        C.reward("nope", q, 1.0, 1.0, beta)


def test_learning_rate_schedule_and_optimizer():
    sched = C.learning_rate_schedule(100, lr0=5e-3, delay_fraction=0.25)  # D = 25
    for t, want in [(0, 0.0), (24, 0.0), (25, 5e-3), (100, 5e-2), (62.5, 5e-3 * 10**0.5)]:
        assert float(sched(t)) == pytest.approx(want, rel=1e-5, abs=1e-12)
    tx = C.make_optimizer(4, lr0=0.1, delay_fraction=0.5)  # lr 0, 0, 0.1, 0.1 * 10**0.5
    state = C.init_state(SPEC, tx)
    upd = jax.jit(C.update, static_argnames=("spec", "tx"))
    idx = jnp.array([1, 1, 0, 2, 0, 1, 0], jnp.int32)
    lrs = []
    for r in (1.0, 0.0, 2.0, 0.0):
        before = state.logits
        state, m = upd(state, idx, r, SPEC, tx)
        lrs.append(float(m["lr"]))
        moved = bool(jnp.any(state.logits != before))
        assert moved == (lrs[-1] > 0 and float(m["advantage"]) != 0.0)
    np.testing.assert_allclose(lrs, [0.0, 0.0, 0.1, 0.1 * 10**0.5], rtol=1e-5)
    assert int(state.step) == 4
    # Adam with beta1 = 0: the step is lr * g / sqrt(nu_hat); invalid entries never move.
    assert np.all(np.asarray(state.logits)[~SPEC.valid] == 0.0)


def test_baseline_debiasing_and_advantage():
    tx = C.make_optimizer(10, delay_fraction=1.0)
    update = jax.jit(C.update, static_argnames=("spec", "tx", "baseline_includes_current"))
    idx = jnp.zeros(SPEC.num_decisions, jnp.int32)
    for includes in (True, False):
        state = C.init_state(SPEC, tx)
        state, m = update(state, idx, 1.0, SPEC, tx, baseline_includes_current=includes)
        assert float(m["advantage"]) == 0.0
        assert float(state.baseline_num / state.baseline_den) == pytest.approx(1.0, abs=1e-7)
        state, m = update(state, idx, 1.0, SPEC, tx, baseline_includes_current=includes)
        assert float(m["baseline"]) == pytest.approx(1.0, abs=1e-6)
    # Rewards 1, 3: the debiased EMA after both is (0.95 * 0.05 + 0.05 * 3) / (0.95 * 0.05 + 0.05).
    b2 = (0.95 * 0.05 * 1 + 0.05 * 3) / (0.95 * 0.05 + 0.05)
    for includes, want in ((True, 3 - b2), (False, 3 - 1.0)):
        state = C.init_state(SPEC, tx)
        state, _ = update(state, idx, 1.0, SPEC, tx, baseline_includes_current=includes)
        state, m = update(state, idx, 3.0, SPEC, tx, baseline_includes_current=includes)
        assert float(m["advantage"]) == pytest.approx(want, rel=1e-5)
        assert float(state.baseline_num / state.baseline_den) == pytest.approx(b2, rel=1e-5)
    # A shard vector is averaged.
    state, m = update(C.init_state(SPEC, tx), idx, jnp.array([0.0, 2.0]), SPEC, tx)
    assert float(m["reward"]) == 1.0


def test_log_prob_counts_only_active_decisions():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(np.where(SPEC.valid, rng.normal(size=SPEC.valid.shape), 0.0), jnp.float32)
    # Family z: no child of a.l1 active; b.l1 picks y.
    idx = jnp.array([1, 2, 1, 2, 1, 1, 1], jnp.int32)
    lg = np.asarray(logits)
    want = _lsm(lg[0])[1] + _lsm(lg[1])[2] + _lsm(lg[6, :2])[1]
    assert float(C.log_prob(logits, SPEC, idx)) == pytest.approx(want, rel=1e-5)
    grads = jax.grad(C.log_prob)(logits, SPEC, idx)
    assert np.all(np.asarray(grads)[2:6] == 0.0)
    # Family y, kernel 5: expansion counts, the grandchild (kernel 7 only) does not.
    idx = jnp.array([0, 1, 0, 1, 1, 1, 0], jnp.int32)
    want = (
        _lsm(lg[0])[0] + _lsm(lg[1])[1] + _lsm(lg[3])[1] + _lsm(lg[4, :2])[1] + _lsm(lg[6, :2])[0]
    )
    assert float(C.log_prob(logits, SPEC, idx)) == pytest.approx(want, rel=1e-5)
    exclude = jnp.array([False, False, False, True, False, False, False])
    assert float(C.log_prob(logits, SPEC, idx, exclude)) == pytest.approx(
        want - _lsm(lg[3])[1], rel=1e-5
    )
    # Entropies: all-decision sum and the expected-active version, by hand.
    probs = [np.exp(_lsm(lg[d, :n])) for d, n in enumerate(SPEC.num_choices)]
    h = np.array([-np.sum(p * np.log(p)) for p in probs])
    assert float(C.entropy(logits, SPEC)) == pytest.approx(h.sum(), rel=1e-5)
    pa = np.array([1, 1, probs[1][0], probs[1][1], probs[1][1], probs[1][1] * probs[3][2], 1])
    assert float(C.expected_active_entropy(logits, SPEC)) == pytest.approx(np.sum(pa * h), rel=1e-5)
    assert float(C.entropy(jnp.zeros_like(logits), SPEC)) == pytest.approx(
        sum(np.log(n) for n in SPEC.num_choices), rel=1e-6
    )


def test_sample_and_argmax_top_down():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=SPEC.valid.shape), jnp.float32)  # padding too: masked
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: C.sample(k, logits, SPEC))(keys))
    raw = np.asarray(jax.vmap(lambda k: C.sample(k, logits, SPEC, raw=True))(keys))
    assert draws.dtype == np.int32 and draws.shape == (4000, 7)
    assert np.all(raw < np.asarray(SPEC.num_choices)) and np.all(raw >= 0)
    active = np.stack([space.active_from_parents(DECS, r) for r in raw])
    np.testing.assert_array_equal(draws, np.where(active, raw, 0))
    np.testing.assert_array_equal(
        np.asarray(jax.vmap(lambda i: C.active_mask(SPEC, i))(draws)), active
    )
    assert 0 < active[:, 5].sum() < 4000 and 0 < active[:, 2].sum() < 4000
    p0 = np.asarray(C.choice_probabilities(logits, SPEC)[0])
    np.testing.assert_allclose(np.bincount(draws[:, 0], minlength=3) / 4000, p0, atol=0.03)
    # argmax: family x (0) wins, so family y's children and grandchild are 0 whatever their logits.
    lg = np.zeros(SPEC.valid.shape, np.float32)
    lg[0, 1] = lg[1, 0] = lg[2, 1] = lg[3, 2] = lg[4, 1] = lg[5, 1] = lg[6, 1] = 1.0
    np.testing.assert_array_equal(C.argmax_architecture(lg, SPEC), [1, 0, 1, 0, 0, 0, 1])
    lg[1] = [0, 2, 0]
    np.testing.assert_array_equal(C.argmax_architecture(lg, SPEC), [1, 1, 0, 2, 1, 1, 1])
    lg[0] = [0, 0, -1e3]  # a padding logit never wins either
    lg[6, 2] = 5.0
    assert C.argmax_architecture(lg, SPEC)[6] == 1
    probs = C.choice_probabilities(lg, SPEC)
    assert [len(p) for p in probs] == list(SPEC.num_choices)
    np.testing.assert_allclose([p.sum() for p in probs], 1.0, rtol=1e-6)


def test_no_retrace_for_new_index_values():
    traces = []
    tx = C.make_optimizer(10, delay_fraction=0.0)

    @jax.jit
    def step(state, key):
        traces.append("step")
        idx = C.sample(key, state.logits, SPEC)
        return C.update(state, idx, jnp.sum(idx) * 0.1, SPEC, tx)

    @jax.jit
    def upd(state, idx, r):
        traces.append("update")
        return C.update(state, idx, r, SPEC, tx)

    state = C.init_state(SPEC, tx)
    for k in jax.random.split(jax.random.PRNGKey(0), 5):
        state, _ = step(state, k)
    for i in range(3):
        state, _ = upd(state, jnp.full(7, i % 2, jnp.int32), float(i))
    assert traces == ["step", "update"]


def test_warmups_and_mixing_weights():
    assert float(C.op_warmup_probability(0, 400)) == 1.0
    assert float(C.op_warmup_probability(50, 400)) == pytest.approx(0.5)
    assert float(C.filters_warmup_probability(100, 400)) == 0.0
    assert float(C.filters_warmup_probability(300, 400)) == 0.0
    assert float(C.warmup_probability(3, 0)) == 0.0
    key = jax.random.PRNGKey(3)
    ops, filt = C.warmup_flags(key, 1.0, 1.0, SPEC)
    np.testing.assert_array_equal(ops, SPEC.op_tagged)
    np.testing.assert_array_equal(filt, SPEC.filters_tagged)
    ops, filt = C.warmup_flags(key, 0.0, 0.0, SPEC)
    assert not np.any(ops) and not np.any(filt)
    spec = C.make_spec(space.get_space("test"))
    flags = jax.vmap(lambda k: C.warmup_flags(k, 0.5, 0.5, spec))(jax.random.split(key, 400))
    ops = np.asarray(flags[0])[:, np.asarray(spec.op_tagged)]
    assert 0.4 < ops.mean() < 0.6 and len({tuple(r) for r in ops}) > 300  # one coin per decision

    idx = jnp.array([1, 2, 1, 0, 1, 0, 1], jnp.int32)
    uniform = jnp.array([False, True, False, True, False, False, False])
    maxf = jnp.array([True, False, False, False, False, False, False])
    w = np.asarray(C.mixing_weights(idx, uniform, maxf, SPEC))
    assert w.shape == (7, 3) and w.dtype == np.float32
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(w[0], [0, 0, 1])  # largest width
    np.testing.assert_allclose(w[1], [1 / 3] * 3)
    np.testing.assert_allclose(w[3], [1 / 3] * 3)
    np.testing.assert_array_equal(w[[2, 4, 5, 6]], [[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    assert np.all(w[~SPEC.valid] == 0)
    w = np.asarray(C.mixing_weights(idx, jnp.ones(7, bool), jnp.zeros(7, bool), SPEC))
    np.testing.assert_allclose(w[6], [0.5, 0.5, 0.0])


def test_reinforce_finds_the_best_choices():
    """R = 0.1 per active decision on its best choice; 300 steps, no delay, lr 0.05 -> 0.5."""
    total = 300
    tx = C.make_optimizer(total, lr0=0.05, delay_fraction=0.0)
    on_best_path = np.asarray(C.active_mask(SPEC, jnp.asarray(BEST)))
    assert list(on_best_path) == [True, True, False, True, True, True, True]

    @jax.jit
    def run(key):
        def step(state, k):
            idx = C.sample(k, state.logits, SPEC)
            r = 0.1 * jnp.sum(C.active_mask(SPEC, idx) & (idx == BEST))
            return C.update(state, idx, r, SPEC, tx)

        return jax.lax.scan(step, C.init_state(SPEC, tx), jax.random.split(key, total))

    for seed in range(3):
        state, metrics = run(jax.random.PRNGKey(seed))
        probs = C.choice_probabilities(state.logits, SPEC)
        p_best = np.array([p[b] for p, b in zip(probs, BEST, strict=True)])
        assert np.all(p_best[on_best_path] > 0.9), (seed, p_best)
        want = np.where(on_best_path, BEST, 0)
        np.testing.assert_array_equal(C.argmax_architecture(state.logits, SPEC), want)
        assert float(metrics["entropy"][-1]) < float(metrics["entropy"][0])
        assert np.all(np.isfinite(np.asarray(metrics["loss"])))
