"""Default experiment configuration (ml_collections), shared by the files in ``configs/``.

Every default lives here; each file under ``configs/`` picks a model and overrides a few fields, and the
command line overrides any field with ``--config.<field>=<value>``. The returned ConfigDict is locked,
so a mistyped key (in a config file or on the command line) is an error, never silently ignored.
"""

import ml_collections

# Model names understood by ``mobiledet_jax.models.build_model``.
MODEL_NAMES = (
    "mobiledet_cpu",
    "mobiledet_dsp",
    "mobiledet_edgetpu",
    "mobiledet_gpu",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
)


def model_config(name: str = "mobiledet_edgetpu") -> ml_collections.ConfigDict:
    """The ``config.model`` block: architecture and numerics."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    m = ml_collections.ConfigDict()
    m.name = name
    m.num_classes = (
        90  # foreground classes; the head predicts num_classes + 1 slots (0 = background)
    )
    m.image_size = 320  # square input; (height, width) sizes are set with image_height/image_width
    m.image_height = -1  # > 0 overrides image_size for the height
    m.image_width = -1  # > 0 overrides image_size for the width
    m.width_multiplier = 1.0  # the TF1 depth_multiplier, applied with the round8 rule
    # DSP block 20 (Fused 160->160): residual in TF1 (the published checkpoints), not in TF2.
    m.dsp_block20_residual = True
    m.compute_dtype = "float32"  # or "bfloat16"; parameters stay float32
    return m


# The paper's two standalone-training schedules (SPEC sections 5 and 9).
SCHEDULES = {
    # 400K steps, global batch 512, peak 0.8, linear warmup over 2000 steps from 0.13333.
    "long": dict(num_steps=400_000, batch_size=512, base_lr=0.8, warmup_steps=2000,
                 warmup_lr=0.13333),
    # 50K steps, global batch 1024, peak 4.0. The paper gives no warmup for it; we keep the long
    # schedule's shape: 2000 warmup steps from the same 1/6 of the peak.
    "short": dict(num_steps=50_000, batch_size=1024, base_lr=4.0, warmup_steps=2000,
                  warmup_lr=4.0 / 6),
}  # fmt: skip


def train_config(schedule: str = "long") -> ml_collections.ConfigDict:
    """The ``config.train`` block: optimizer, schedule, loop."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    t = ml_collections.ConfigDict()
    t.schedule = schedule
    for k, v in SCHEDULES[schedule].items():
        setattr(t, k, v)
    t.hold_steps = 0
    t.momentum = 0.9  # SGD with (non-Nesterov) momentum
    t.l2_weight = 4e-5  # slim convention: l2_weight * 0.5 * sum(w^2) over conv kernels
    t.grad_clip_norm = 0.0  # 0: none (the reference config sets none)
    t.log_every = 100  # steps between metric lines
    t.nan_check_every = 1  # steps between NaN/Inf loss checks (each one syncs with the host)
    # Quantization-aware training (export/qat.py, qwix): fake int8 quantization as TFLite does it
    # (per-channel symmetric weights, per-tensor activation ranges in the `quant_stats` collection,
    # BN folded, ReLU6 fused), calibrated on the first batch and saved in checkpoints; evaluation
    # runs the fake-quant model, and `export --format=int8` converts it instead of PTQ. Usually
    # with checkpoint.init_from=<float workdir> and a lower learning rate. A conv that qwix would
    # leave float is an error (QatError).
    t.qat = False
    return t


def base_config(model_name: str = "mobiledet_edgetpu", schedule: str = "long"):
    """A complete, unlocked experiment config. Config files lock it before returning."""
    from mobiledet_jax.data.config import data_config  # no TF import at module level

    c = ml_collections.ConfigDict()
    c.model = model_config(model_name)
    c.train = train_config(schedule)
    c.data = data_config()

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices along the data axis; -1 = all devices (parameters replicated)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 2000
    c.checkpoint.keep = 3  # most recent checkpoints kept (the best-by-mAP one is kept apart)
    c.checkpoint.async_save = True
    c.checkpoint.init_from = ""  # workdir of a checkpoint to fine-tune from ("" = from scratch)
    c.checkpoint.init_from_step = -1  # -1 = its latest step
    c.checkpoint.restore_scopes = ("backbone", "neck")  # must restore completely from init_from

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 10_000  # 0 disables periodic evaluation (the final one still runs)
    c.eval.batch_size = 64
    c.eval.split = "val"
    c.eval.max_batches = -1  # -1 = the whole split; 0 = no evaluation at all

    c.seed = 0
    return c
