"""``run_search(config, workdir)``: the TuNAS-style search loop behind ``python -m mobiledet_jax.search``.

Every step (``config.train.num_steps`` of them):

1. the controller samples an architecture ``a`` (with the op / width warm-ups: a decision may be
   replaced by the uniform mix of its choices, the widths by the largest);
2. the supernet's shared weights take one SGD step on a training batch of ``a``
   (``config.train``: the detection loss plus L2 over the active weights);
3. the updated supernet detects on a batch of the held-out reward images (a fixed
   ``search.reward_fraction`` of the training images by id, never trained on, never val) and
   their COCO AP (pycocotools, on the host) is the quality ``Q``;
4. the latency model prices ``a`` (``c``) and the reward ``R = Q + beta |c/c0 - 1|`` (or the
   MnasNet forms) updates the controller by REINFORCE against an EMA baseline; the controller's
   learning rate is 0 for the first ``search.rl_delay`` of the steps.

One architecture is sampled per step for the whole global batch (TuNAS samples one per TPU core;
one per step keeps synchronized BN and the reward batch simple, costs the same compute, and gives
the controller one sample per step instead of one per core: say so when comparing step counts).
The supernet is one compiled program for every architecture (masks and conditionals; a recompile
is an error). Written to the workdir: ``search_log.jsonl`` and TensorBoard scalars every step,
``controller_log.jsonl`` (choice probabilities every ``search.log_logits_every`` steps), orbax
checkpoints of everything (``search.checkpoints``; a preempted search resumes exactly), and at the
end ``arch.json`` (the argmax architecture, its table and predicted latency), ``arch.png`` (its
block diagram) and ``controller.png`` (the probabilities over time).
"""

import dataclasses
import json
import logging
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from mobiledet_jax import atomic_files, data, workdir_lock
from mobiledet_jax.config import ConfigError
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.detection import losses, matcher, postprocess
from mobiledet_jax.models import input_size, specs
from mobiledet_jax.models.factory import resolve_compute_dtype
from mobiledet_jax.progress import Progress
from mobiledet_jax.search import controller as ctl
from mobiledet_jax.search import cost_model as cost_lib
from mobiledet_jax.search import space as space_lib
from mobiledet_jax.search import supernet as supernet_lib
from mobiledet_jax.search.checkpoints import SearchCheckpointer
from mobiledet_jax.search.quality import batch_quality
from mobiledet_jax.sharding import batch_sharding, make_mesh, replicated
from mobiledet_jax.training import schedules
from mobiledet_jax.training.monitoring import MetricsLog
from mobiledet_jax.training.optimizer import make_optimizer
from mobiledet_jax.training.preemption import PreemptionWatcher
from mobiledet_jax.training.step import detection_objective

SEARCH_LOG = "search_log.jsonl"
CONTROLLER_LOG = "controller_log.jsonl"
ARCH_FILE = "arch.json"
ARCH_VERSION = 1


@flax.struct.dataclass
class SearchState:
    step: jax.Array
    params: Any
    opt_state: Any
    controller: Any
    key: jax.Array


def middle_indices(space: space_lib.SearchSpace) -> np.ndarray:
    """The architecture at the middle choice of every decision (c0's reference)."""
    decs = space_lib.decisions(space)
    idx = np.array([(len(d.choices) - 1) // 2 for d in decs], np.int64)
    fam = space_lib.decision_index(space)
    for i, d in enumerate(decs):  # a middle family is never "skip": the reference keeps layers
        if d.name.endswith(".family") and d.choices[idx[i]] == space_lib.SKIP:
            idx[i] = 0
    del fam
    return np.where(space_lib.active_from_parents(decs, idx), idx, 0)


def load_cost_model(config) -> cost_lib.CostModel:
    s = config.search
    if not s.cost_model:
        raise ConfigError(
            "config.search.cost_model is empty: build a latency table with python -m "
            "mobiledet_jax.latency_table and pass --config.search.cost_model=<table.json>"
        )
    if not epath.Path(s.cost_model).exists():
        raise ConfigError(f"config.search.cost_model: no file {s.cost_model}")
    model = cost_lib.CostModel.load(s.cost_model)
    cost_lib.require_report(model)
    size = input_size(config.model)[0]
    if int(model.metadata.get("image_size", size)) != size:
        raise ConfigError(
            f"the latency table {s.cost_model} was measured at {model.metadata['image_size']} px, "
            f"the search runs at {size}: build a table at --image_size={size}"
        )
    return model


def _check(config) -> None:
    s, t = config.search, config.train
    space_lib.get_space(s.space)
    if s.reward not in ctl.REWARDS:
        raise ConfigError(f"config.search.reward must be one of {ctl.REWARDS}, got {s.reward!r}")
    if s.quality not in ("ap", "ap50"):
        raise ConfigError(f"config.search.quality must be 'ap' or 'ap50', got {s.quality!r}")
    if not 0.0 < s.reward_fraction < 1.0:
        raise ConfigError("config.search.reward_fraction must be in (0, 1)")
    for field in ("rl_delay", "op_warmup", "filter_warmup"):
        if not 0.0 <= s[field] < 1.0:
            raise ConfigError(f"config.search.{field} must be a fraction in [0, 1)")
    if t.num_steps < 1 or t.batch_size < 1 or s.reward_batch_size < 1:
        raise ConfigError("config.train.num_steps, batch_size and search.reward_batch_size >= 1")
    devices = jax.device_count() if config.mesh.data == -1 else config.mesh.data
    for name, b in (
        ("train.batch_size", t.batch_size),
        ("search.reward_batch_size", s.reward_batch_size),
    ):
        if b % devices:
            raise ConfigError(f"config.{name}={b} does not divide over the {devices} devices")


def state_initializer(net, space, size, tx, cspec, ctx):
    """``(k_init, k_run) -> SearchState``: every branch's weights, the optimizer, the controller."""
    weights = jnp.asarray(supernet_lib.uniform_weights(space))
    images = jnp.zeros((1, *size, 3), jnp.float32)

    def init(k_init, k_run):
        params = net.init(k_init, images, weights, train=True)["params"]
        return SearchState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            controller=ctl.init_state(cspec, ctx),
            key=k_run,
        )

    return init


def build_programs(config, net, space, anchors, cspec, ctx, tx, mesh) -> tuple:
    """The search's four jitted programs on ``mesh``: ``sample(state)``, ``train(state, weights,
    batch)``, ``detect(params, weights, reward_batch)`` and ``learn(state, indices, replaced,
    reward)`` (the AOT check, ``search.compile_check``, lowers the same ones)."""
    cfg, t, s = config, config.train, config.search
    num_classes = config.model.num_classes
    match_s = matcher.MatcherSettings.from_config(cfg.detection.matcher)
    loss_s = losses.LossSettings.from_config(cfg.detection.loss)
    nms = postprocess.NmsSettings.from_config(cfg.detection.nms)
    lr_schedule = schedules.from_config(t)
    total = t.num_steps
    rep, data_sh = replicated(mesh), batch_sharding(mesh)

    def sample(state: SearchState):
        key = jax.random.fold_in(state.key, state.step)
        k_sample, k_warm = jax.random.split(key)
        # raw draws mix the branches (a uniform family row mixes every family's own
        # choices); the zeroed ones are the architecture that is priced and learned from
        raw = ctl.sample(k_sample, state.controller.logits, cspec, raw=True)
        p_ops = ctl.op_warmup_probability(state.step, total, s.op_warmup)
        p_filters = ctl.filters_warmup_probability(state.step, total, s.filter_warmup)
        uniform, widest = ctl.warmup_flags(k_warm, p_ops, p_filters, cspec)
        weights = ctl.mixing_weights(raw, uniform, widest, cspec)
        warm = {"p_ops": p_ops, "p_filters": p_filters}
        return ctl.zero_inactive(cspec, raw), uniform | widest, weights, warm

    def train(state: SearchState, weights, batch):
        def objective(params):
            out = net.apply({"params": params}, batch["image"], weights, train=True)
            l2 = t.l2_weight * supernet_lib.active_l2(params, weights, space)
            return detection_objective(out, batch, anchors, num_classes, l2, match_s, loss_s)

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["learning_rate"] = lr_schedule(state.step)
        return state.replace(
            params=optax.apply_updates(state.params, updates), opt_state=opt_state
        ), metrics

    def detect(params, weights, batch):
        out = net.apply({"params": params}, batch["image"], weights, train=True)
        return postprocess.postprocess(out["box_encodings"], out["class_logits"], anchors, nms)

    def learn(state: SearchState, indices, replaced, reward):
        controller, metrics = ctl.update(
            state.controller,
            indices,
            reward,
            cspec,
            ctx,
            s.entropy_weight,
            baseline_momentum=s.baseline_momentum,
            exclude=replaced,
        )
        return state.replace(controller=controller, step=state.step + 1), metrics

    return (
        jax.jit(sample, out_shardings=rep),
        jax.jit(
            train,
            in_shardings=(rep, rep, data_sh),
            out_shardings=(rep, rep),
            donate_argnums=(0,),
        ),
        jax.jit(detect, in_shardings=(rep, rep, data_sh), out_shardings=rep),
        jax.jit(learn, out_shardings=(rep, rep), donate_argnums=(0,)),
    )


def _reward_data(config) -> ml_collections.ConfigDict:
    """The reward images as the model sees them at evaluation: no flips, no crops."""
    d = ml_collections.ConfigDict(config.data.to_dict())
    d.augment.horizontal_flip = False
    d.augment.ssd_random_crop = False
    return d


class _Search:
    """Everything one search holds: the space, the programs, the iterators, the state."""

    def __init__(self, config, workdir: epath.Path):
        self.config, self.workdir = config, workdir
        s, t = config.search, config.train
        self.space = space_lib.get_space(s.space)
        self.cost = load_cost_model(config)
        self.c0 = float(s.c0_ms) or float(
            s.c0_scale * self.cost.predict(space_lib.decode(self.space, middle_indices(self.space)))
        )
        self.mesh = make_mesh(config.mesh)
        self.size = input_size(config.model)
        self.num_classes = config.model.num_classes
        anchor_settings = anchors_lib.AnchorSettings.from_config(config.detection.anchors)
        self.anchors = anchors_lib.anchors_from_config(config.detection.anchors, *self.size)
        self.net = supernet_lib.Supernet(
            self.space,
            self.num_classes,
            anchors_per_location=tuple(anchors_lib.anchors_per_location(anchor_settings)),
            conv_form=config.model.conv_form,
            dtype=jnp.dtype(resolve_compute_dtype(config.model.compute_dtype)),
            remat=config.search.remat,
        )
        self.cspec = ctl.make_spec(self.space)
        self.ctx = ctl.make_optimizer(t.num_steps, s.controller_lr, s.rl_delay)
        self.tx = make_optimizer(t)
        frac = s.reward_fraction
        self.weights_iter = data.build_train_iterator(
            config.data, t.batch_size, self.size, self.mesh, config.seed, holdout=("rest", frac)
        )
        self.reward_iter = data.build_train_iterator(
            _reward_data(config),
            s.reward_batch_size,
            self.size,
            self.mesh,
            config.seed + 1,
            holdout=("held_out", frac),
        )
        if self.weights_iter.info.num_classes != self.num_classes:
            raise ConfigError(
                f"config.model.num_classes is {self.num_classes} but the data has "
                f"{self.weights_iter.info.num_classes} classes"
            )
        self.state = self._init_state()
        self._build_programs()

    def _init_state(self) -> SearchState:
        init = state_initializer(self.net, self.space, self.size, self.tx, self.cspec, self.ctx)
        # XLA's RngBitGenerator for the initializers: every branch's initializers compile in 37 s
        # instead of 63 s with threefry (test space, 2 cores); the sampling key stays threefry
        k_init = jax.random.key(self.config.seed, impl="rbg")
        k_run = jax.random.fold_in(jax.random.key(self.config.seed), 1)
        return jax.jit(init, out_shardings=replicated(self.mesh))(k_init, k_run)

    def _build_programs(self) -> None:
        self.sample_fn, self.train_fn, self.detect_fn, self.learn_fn = build_programs(
            self.config, self.net, self.space, self.anchors, self.cspec, self.ctx, self.tx,
            self.mesh,
        )  # fmt: skip

    def programs(self):
        return (self.sample_fn, self.train_fn, self.detect_fn, self.learn_fn)

    def cache_sizes(self) -> tuple[int, ...]:
        return tuple(f._cache_size() for f in self.programs())

    def step(self) -> dict[str, float]:
        """One search step; returns its scalars (host floats)."""
        s = self.config.search
        indices, replaced, weights, warm = self.sample_fn(self.state)
        batch = next(self.weights_iter)
        self.state, train_metrics = self.train_fn(self.state, weights, batch)
        rbatch = next(self.reward_iter)
        dets = self.detect_fn(self.state.params, weights, rbatch)
        quality = batch_quality(dets, rbatch, self.size, self.num_classes, s.quality)
        idx = np.asarray(jax.device_get(indices))
        cost = float(self.cost.predict(space_lib.decode(self.space, idx)))
        reward = float(ctl.reward(s.reward, quality, cost, self.c0, s.beta))
        self.state, cmetrics = self.learn_fn(self.state, indices, replaced, jnp.float32(reward))
        out = {
            "quality": quality,
            "cost_ms": cost,
            "cost_ratio": cost / self.c0,
            "reward": reward,
            **{k: float(v) for k, v in jax.device_get(warm).items()},
            **{f"controller/{k}": float(v) for k, v in jax.device_get(cmetrics).items()},
            **{
                f"supernet/{k}": float(v)
                for k, v in jax.device_get(train_metrics).items()
                if np.ndim(v) == 0
            },
        }
        return out

    def probabilities(self) -> list[list[float]]:
        return [
            np.asarray(p).tolist()
            for p in ctl.choice_probabilities(self.state.controller.logits, self.cspec)
        ]

    def final_architecture(self) -> dict:
        idx = ctl.argmax_architecture(self.state.controller.logits, self.cspec)
        spec = space_lib.decode(self.space, idx)
        probs = self.probabilities()
        entropy = float(sum(-np.sum(np.asarray(p) * np.log(np.maximum(p, 1e-12))) for p in probs))
        return {
            "version": ARCH_VERSION,
            "space": self.space.name,
            "target": self.space.target,
            "image_size": self.size[0],
            "indices": [int(i) for i in idx],
            "backbone": specs.spec_to_dict(spec),
            "rows": [dataclasses.asdict(b) for b in spec.blocks],
            "c0_ms": self.c0,
            "predicted_ms": float(self.cost.predict(spec)),
            "cost_model": {
                "file": str(self.config.search.cost_model),
                "sha256": self.cost.digest(),
            },
            "seed": int(self.config.seed),
            "step": int(jax.device_get(self.state.step)),
            "logits_entropy": entropy,
        }


def _append(path: epath.Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def run_search(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Searches ``config`` in ``workdir`` (resuming from its newest usable checkpoint); returns the
    final ``arch.json`` content."""
    _check(config)
    lock = workdir_lock.hold(workdir)
    try:
        return _run_locked(config, epath.Path(workdir), lock)
    finally:
        lock.release()


def _run_locked(config, workdir: epath.Path, lock) -> dict:
    del lock
    search = _Search(config, workdir)
    t, s = config.train, config.search
    primary = jax.process_index() == 0
    meta = {"config": json.loads(config.to_json(sort_keys=True)), "space": search.space.name}
    ckpt = SearchCheckpointer(
        str(workdir), config.checkpoint.keep, config.checkpoint.async_save, meta
    )
    iterators = {"weights": search.weights_iter, "reward": search.reward_iter}
    restored = ckpt.restore(search.state, iterators)
    if restored is not None:
        search.state, saved_step = restored
        logging.info("resumed the search from step %d", saved_step)
    if primary:
        atomic_files.write_text(workdir / "config.json", config.to_json(indent=1, sort_keys=True))
    start = int(jax.device_get(search.state.step))
    log = MetricsLog(workdir, SEARCH_LOG)
    bar = Progress("search", t.num_steps, "step", start=start, eta_from=start + 1, enabled=primary)
    preemption = PreemptionWatcher()
    compiled = None
    try:
        for step in range(start + 1, t.num_steps + 1):
            t0 = time.time()
            scalars = search.step()
            scalars["step_seconds"] = time.time() - t0
            log.write(step, scalars)
            compiled = compiled or search.cache_sizes()
            last = step == t.num_steps
            if step % s.log_logits_every == 0 or last or step == start + 1:
                if primary:
                    _append(
                        workdir / CONTROLLER_LOG,
                        {"step": step, "probabilities": search.probabilities()},
                    )
            if step % t.log_every == 0 or last:
                if search.cache_sizes() != compiled:
                    raise RuntimeError(f"a search program was recompiled by step {step}")
                text = (
                    f"Q {scalars['quality']:.3f}  c/c0 {scalars['cost_ratio']:.3f}  "
                    f"R {scalars['reward']:.3f}  H {scalars.get('controller/entropy', float('nan')):.2f}  "
                    f"loss {scalars['supernet/loss']:.3f}"
                )
                bar.update(step, text, line=True)
            else:
                bar.update(step)
            if step % config.checkpoint.every_steps == 0 or last:
                ckpt.save(step, search.state, iterators, force=last)
            if preemption.should_stop(step) and not last:
                ckpt.save(step, search.state, iterators, force=True)
                ckpt.close()
                preemption.stopped(step)
                logging.warning("preempted: saved search step %d, exiting", step)
                return {}
    finally:
        bar.close()
        preemption.close()
        log.flush()
        ckpt.close()
    result = search.final_architecture()
    if primary:
        atomic_files.write_text(workdir / ARCH_FILE, json.dumps(result, indent=1))
        _pictures(workdir, result, config)
    return result


def _pictures(workdir: epath.Path, result: dict, config) -> None:
    """``arch.png`` (the block diagram) and ``controller.png`` (choice probabilities over time);
    a failure to draw is a warning, never an error of the search."""
    try:
        from mobiledet_jax.models import architecture_summary, block_diagram
        from mobiledet_jax.visualization import figures, search_figures

        model_config = ml_collections.ConfigDict(config.model.to_dict())
        model_config.arch = specs.spec_to_json(specs.spec_from_dict(result["backbone"]))
        block_diagram.plot_blocks(
            architecture_summary.summarize(model_config), str(workdir / "arch.png")
        )
        records = [json.loads(line) for line in (workdir / CONTROLLER_LOG).read_text().splitlines()]
        decs = space_lib.decisions(space_lib.get_space(result["space"]))
        fig = search_figures.controller_figure(
            [r["step"] for r in records],
            [r["probabilities"] for r in records],
            [d.name for d in decs],
            [d.choices for d in decs],
        )
        figures.save_figure(fig, str(workdir / "controller.png"))
    except Exception as e:  # noqa: BLE001 - pictures never fail a finished search
        logging.warning("search pictures not written: %s", e)
