"""The search controller: a factorised categorical policy over the decisions of a search space,
trained with REINFORCE against a latency-aware reward (TuNAS, Bender et al. 2020; the MobileDets
paper, Xiong et al. 2021, searches its detection backbones with the same controller).

What is here, and where it comes from:

* Policy. One logit vector per decision (all zero at the start, temperature 1), the decisions
  independent. The logits of a space live in one ``[D, C_max]`` float32 array; entries past a
  decision's own number of choices are masked out by a static ``valid`` mask.
* Hierarchy. A sub-decision (a family's kernel, expansion or ranks) only counts when its parent
  family was picked, transitively. ``sample`` draws every decision and sets the inactive ones to 0
  (the convention of ``space.py``); the log-probability sums the active decisions only.
* Rewards (TuNAS ``search_space_utils.reward_for_single_cost_model``), with the cost ratio
  ``c / c0``: ``abs`` Q + beta |c/c0 - 1|, ``mnas`` Q (c/c0)^beta, ``mnas_hard`` Q min((c/c0)^beta, 1).
* Baseline: a zero-debiased exponential moving average of the (shard-mean) reward. As in TuNAS
  (``custom_layers.update_exponential_moving_average`` feeds ``rl_advantage`` in
  ``mobile_architecture_search.py``), by default the advantage uses the baseline *after* this
  step's reward entered it; with ``baseline_includes_current=False`` it uses the previous value
  (and is 0 at the first step, where the average is still empty).
* Loss -A log pi(a) - lambda_H H(pi), A held constant; Adam with beta1 = 0, beta2 = 0.999,
  eps = 1e-8; the learning rate is 0 for the first ``delay_fraction`` of the search, then grows
  from lr0 to 10 lr0 exponentially by its end (TuNAS' ``use_exponential_rl_learning_rate_schedule``).
* Warmups of the one-shot weights (TuNAS ``controller.independent_sample``): with a probability
  decaying linearly from 1 to 0 over a quarter of the search, an op decision is replaced by the
  uniform mix of its choices, and a filters decision by its largest width. As in TuNAS, each
  decision tosses its own coin.

The keyword defaults below are the TuNAS / MobileDets values; the search driver passes the values
of ``config.search`` explicitly, so these are not hidden settings.
"""

import dataclasses
from collections.abc import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mobiledet_jax.search import space as space_lib

OP_SUFFIXES = (".family", ".kernel", ".expansion", ".r_in", ".r_out")
FILTERS_SUFFIX = ".filters"
REWARDS = ("abs", "mnas", "mnas_hard")
_MASKED = -1e9  # logit of a choice past a decision's own count: probability exactly 0, no NaN


@dataclasses.dataclass(frozen=True)
class ControllerSpec:
    """The static structure of a space's decisions (hashable: a ``jit`` static argument)."""

    names: tuple[str, ...]
    num_choices: tuple[int, ...]
    parents: tuple[int, ...]  # -1: always active
    parent_values: tuple[int, ...]
    largest: tuple[int, ...]  # index of the largest choice (the max-filters warmup target)
    op_tagged: tuple[bool, ...]
    filters_tagged: tuple[bool, ...]
    depth: int  # longest parent chain (0: no sub-decisions)

    @property
    def num_decisions(self) -> int:
        return len(self.names)

    @property
    def max_choices(self) -> int:
        return max(self.num_choices)

    @property
    def valid(self) -> np.ndarray:
        """bool [D, C_max]: choice c exists for decision d."""
        return np.arange(self.max_choices)[None, :] < np.asarray(self.num_choices)[:, None]


def make_spec(decs: "space_lib.SearchSpace | Sequence[space_lib.Decision]") -> ControllerSpec:
    """The ``ControllerSpec`` of a search space (or of a tuple of ``Decision``s, parents first)."""
    if isinstance(decs, space_lib.SearchSpace):
        decs = space_lib.decisions(decs)
    depth = []
    for i, d in enumerate(decs):
        if not d.choices:
            raise ValueError(f"decision {d.name} has no choices")
        if d.parent >= 0 and not (
            d.parent < i and 0 <= d.parent_value < len(decs[d.parent].choices)
        ):
            raise ValueError(f"decision {d.name}: bad parent {d.parent} / value {d.parent_value}")
        depth.append(0 if d.parent < 0 else depth[d.parent] + 1)
    filters = tuple(d.name.endswith(FILTERS_SUFFIX) for d in decs)
    return ControllerSpec(
        names=tuple(d.name for d in decs),
        num_choices=tuple(len(d.choices) for d in decs),
        parents=tuple(d.parent for d in decs),
        parent_values=tuple(d.parent_value for d in decs),
        largest=tuple(
            int(np.argmax(d.choices)) if f else len(d.choices) - 1
            for d, f in zip(decs, filters, strict=True)
        ),
        op_tagged=tuple(d.name.endswith(OP_SUFFIXES) for d in decs),
        filters_tagged=filters,
        depth=max(depth),
    )


def _active(spec: ControllerSpec, indices, xp):
    parents = np.asarray(spec.parents)
    root = parents < 0
    p, pv = np.maximum(parents, 0), np.asarray(spec.parent_values)
    active = xp.asarray(root)
    for _ in range(spec.depth):  # after k rounds every decision of depth <= k is right
        active = root | (active[p] & (indices[p] == pv))
    return active


def active_mask(spec: ControllerSpec, indices: jax.Array) -> jax.Array:
    """bool [D]: which decisions matter for ``indices`` (jit-able)."""
    return _active(spec, jnp.asarray(indices), jnp)


def zero_inactive(spec: ControllerSpec, indices: jax.Array) -> jax.Array:
    """``indices`` with the inactive decisions set to 0."""
    return jnp.where(active_mask(spec, indices), indices, 0)


def masked_logits(logits: jax.Array, spec: ControllerSpec) -> jax.Array:
    return jnp.where(spec.valid, logits, _MASKED)


def sample(key: jax.Array, logits: jax.Array, spec: ControllerSpec, raw: bool = False) -> jax.Array:
    """int32 [D]: one independent draw per decision, inactive ones set to 0. With ``raw=True``
    (static) every decision keeps its draw: during the op warmup a uniform family row mixes in
    every family, whose sub-decisions then need a real draw; pass the raw draws to
    ``mixing_weights`` and ``zero_inactive`` of them to ``update`` and the cost model."""
    idx = jax.random.categorical(key, masked_logits(logits, spec), axis=-1).astype(jnp.int32)
    return idx if raw else zero_inactive(spec, idx)


def log_prob(
    logits: jax.Array,
    spec: ControllerSpec,
    indices: jax.Array,
    exclude: jax.Array | None = None,
) -> jax.Array:
    """log pi(a): the sum of log softmax(theta_d)[a_d] over the ACTIVE decisions, leaving out the
    ``exclude`` ones (bool [D]; the decisions a warmup replaced). TuNAS scores a replaced decision
    log p or log(1 - p) + log pi; the constant terms carry no gradient, and the (1 - p) weighting
    only matters while the warmup lasts, which ends before the RL learning rate leaves 0."""
    lp = jax.nn.log_softmax(masked_logits(logits, spec), axis=-1)
    lp = jnp.take_along_axis(lp, jnp.asarray(indices, jnp.int32)[:, None], axis=-1)[:, 0]
    mask = active_mask(spec, indices)
    if exclude is not None:
        mask = mask & ~exclude
    return jnp.sum(jnp.where(mask, lp, 0.0))


def entropies(logits: jax.Array, spec: ControllerSpec) -> jax.Array:
    """float32 [D]: the entropy of each decision's categorical (nats)."""
    z = masked_logits(logits, spec)
    plogp = jax.nn.softmax(z, axis=-1) * jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.where(spec.valid, plogp, 0.0), axis=-1)


def entropy(logits: jax.Array, spec: ControllerSpec) -> jax.Array:
    """The sum of the entropies of ALL decisions, active or not (the ``entropy`` metric and the
    entropy bonus of the loss). TuNAS sums those active in the current sample instead."""
    return jnp.sum(entropies(logits, spec))


def expected_active_entropy(logits: jax.Array, spec: ControllerSpec) -> jax.Array:
    """sum_d P(d active) H_d, with P(active) the product of the parent-choice probabilities up the
    chain (the entropy of the architecture distribution, counting each decision where it matters)."""
    probs = jax.nn.softmax(masked_logits(logits, spec), axis=-1)
    parents = np.asarray(spec.parents)
    root = parents < 0
    p, pv = np.maximum(parents, 0), np.maximum(np.asarray(spec.parent_values), 0)
    pa = jnp.ones(spec.num_decisions)
    for _ in range(spec.depth):
        pa = jnp.where(root, 1.0, pa[p] * probs[p, pv])
    return jnp.sum(pa * entropies(logits, spec))


def reward(kind: str, quality, cost, c0, beta):
    """The TuNAS rewards with cost ratio c / c0 (jnp; scalars or arrays)."""
    ratio = jnp.asarray(cost, jnp.float32) / c0
    if kind == "abs":
        return quality + beta * jnp.abs(ratio - 1.0)
    if kind == "mnas":
        return quality * ratio**beta
    if kind == "mnas_hard":
        return quality * jnp.minimum(ratio**beta, 1.0)
    raise ValueError(f"unknown reward {kind!r}; expected one of {REWARDS}")


def learning_rate_schedule(
    total_steps: int, lr0: float = 5e-3, delay_fraction: float = 0.25
) -> Callable[[jax.Array], jax.Array]:
    """0 for t < D = int(delay_fraction T), then lr0 10^((t - D) / (T - D)): lr0 at D, 10 lr0 at T."""
    delay = int(delay_fraction * total_steps)
    span = max(1, total_steps - delay)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        return jnp.where(t >= delay, lr0 * 10.0 ** (jnp.maximum(t - delay, 0.0) / span), 0.0)

    return schedule


def make_optimizer(
    total_steps: int,
    lr0: float = 5e-3,
    delay_fraction: float = 0.25,
    b1: float = 0.0,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam on the logits with the learning rate of ``learning_rate_schedule`` at the optimizer's
    own update count, so ``update`` must run once per search step from step 0 (RL delay included:
    Adam's second moment accumulates then, as in TuNAS)."""
    return optax.inject_hyperparams(optax.adam)(
        learning_rate=learning_rate_schedule(total_steps, lr0, delay_fraction),
        b1=b1,
        b2=b2,
        eps=eps,
    )


def warmup_probability(step, warmup_steps: int) -> jax.Array:
    """max(0, 1 - t / warmup_steps): 1 at t = 0, 0 from ``warmup_steps`` on (0 if that is 0)."""
    if warmup_steps <= 0:
        return jnp.zeros((), jnp.float32)
    return jnp.maximum(0.0, 1.0 - jnp.asarray(step, jnp.float32) / warmup_steps)


def op_warmup_probability(step, total_steps: int, fraction: float = 0.25) -> jax.Array:
    return warmup_probability(step, int(fraction * total_steps))


def filters_warmup_probability(step, total_steps: int, fraction: float = 0.25) -> jax.Array:
    return warmup_probability(step, int(fraction * total_steps))


def warmup_flags(
    key: jax.Array, p_ops, p_filters, spec: ControllerSpec
) -> tuple[jax.Array, jax.Array]:
    """(uniform_ops, max_filters), bool [D]: each op decision (``OP_SUFFIXES``) becomes uniform
    with probability ``p_ops``, each ``.filters`` decision takes its largest width with
    probability ``p_filters``; one independent coin per decision (as TuNAS does)."""
    k_ops, k_filters = jax.random.split(key)
    shape = (spec.num_decisions,)
    uniform_ops = (jax.random.uniform(k_ops, shape) < p_ops) & np.asarray(spec.op_tagged)
    max_filters = (jax.random.uniform(k_filters, shape) < p_filters) & np.asarray(
        spec.filters_tagged
    )
    return uniform_ops, max_filters


def mixing_weights(
    indices: jax.Array, uniform_ops: jax.Array, max_filters: jax.Array, spec: ControllerSpec
) -> jax.Array:
    """float32 [D, C_max], row d = the mixing weights of decision d's branches: one-hot at the
    chosen index; 1/n over the valid choices where ``uniform_ops``; one-hot at the largest choice
    where ``max_filters``. Every row sums to 1; padding columns are 0."""
    valid = jnp.asarray(spec.valid, jnp.float32)
    chosen = jax.nn.one_hot(indices, spec.max_choices, dtype=jnp.float32)
    uniform = valid / jnp.sum(valid, axis=-1, keepdims=True)
    largest = jax.nn.one_hot(np.asarray(spec.largest), spec.max_choices, dtype=jnp.float32)
    return jnp.where(
        uniform_ops[:, None], uniform, jnp.where(max_filters[:, None], largest, chosen)
    )


@flax.struct.dataclass
class ControllerState:
    logits: jax.Array  # float32 [D, C_max]
    opt_state: optax.OptState
    step: jax.Array  # int32, updates done
    baseline_num: jax.Array  # EMA numerator and zero-debias denominator
    baseline_den: jax.Array


def init_state(spec: ControllerSpec, tx: optax.GradientTransformation) -> ControllerState:
    logits = jnp.zeros((spec.num_decisions, spec.max_choices), jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    return ControllerState(logits, tx.init(logits), jnp.zeros((), jnp.int32), zero, zero)


def update(
    state: ControllerState,
    indices: jax.Array,
    reward: jax.Array,
    spec: ControllerSpec,
    tx: optax.GradientTransformation,
    entropy_weight: float = 0.0,
    *,
    baseline_momentum: float = 0.95,
    exclude: jax.Array | None = None,
    baseline_includes_current: bool = True,
) -> tuple[ControllerState, dict[str, jax.Array]]:
    """One REINFORCE step for the architecture ``indices`` (zeroed inactive) and its ``reward``
    (a scalar; an array is averaged, e.g. over shards). jit with ``spec``, ``tx`` and
    ``baseline_includes_current`` static. ``exclude``: see ``log_prob``."""
    r = jnp.mean(jnp.asarray(reward, jnp.float32))
    m = baseline_momentum
    num = m * state.baseline_num + (1.0 - m) * r
    den = m * state.baseline_den + (1.0 - m)
    if baseline_includes_current:
        baseline = num / den
    else:  # the previous value; none yet at the first step: advantage 0
        previous = state.baseline_num / jnp.maximum(state.baseline_den, 1e-30)
        baseline = jnp.where(state.baseline_den > 0, previous, r)
    advantage = r - baseline

    def loss_fn(logits):
        lp = log_prob(logits, spec, indices, exclude)
        h = entropy(logits, spec)
        return -jax.lax.stop_gradient(advantage) * lp - entropy_weight * h, (lp, h)

    (loss, (lp, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.logits)
    updates, opt_state = tx.update(grads, state.opt_state, state.logits)
    hyper = getattr(opt_state, "hyperparams", {})
    new_state = ControllerState(
        optax.apply_updates(state.logits, updates), opt_state, state.step + 1, num, den
    )
    metrics = {
        "loss": loss,
        "reward": r,
        "advantage": advantage,
        "baseline": baseline,
        "log_prob": lp,
        "entropy": h,
        "entropy_expected": expected_active_entropy(state.logits, spec),
        "lr": jnp.asarray(hyper.get("learning_rate", jnp.nan), jnp.float32),
    }
    return new_state, metrics


def argmax_architecture(logits, spec: ControllerSpec) -> np.ndarray:
    """int64 [D]: the most likely choice of each decision, top-down (inactive ones 0)."""
    idx = np.argmax(np.where(spec.valid, np.asarray(logits), -np.inf), axis=-1)
    return np.where(_active(spec, idx, np), idx, 0).astype(np.int64)


def choice_probabilities(logits, spec: ControllerSpec) -> list[np.ndarray]:
    """Each decision's choice probabilities (its own length), e.g. to plot them over the search."""
    probs = np.asarray(jax.nn.softmax(masked_logits(jnp.asarray(logits), spec), axis=-1))
    return [probs[d, :n] for d, n in enumerate(spec.num_choices)]
