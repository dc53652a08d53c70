"""Published facts of one Cloud TPU chip and its host VM: peak FLOP/s, HBM, host vCPUs.

Standard library only, like ``tpu_slices`` (whose families are the keys). ``training.roofline``
turns a compiled step's FLOPs and bytes into a predicted step time with these figures; the README's
AOT table shows them. Each figure is Google Cloud's published one, with its page; what is not
published is marked so.

| chip | peak bf16 per chip | HBM per chip | HBM bandwidth | TensorCores | host vCPUs (4-chip host) |
|---|---|---|---|---|---|
| v2 | 45 TFLOP/s | 16 GiB | 600 GB/s | 2 | 96 (n1 host) |
| v3 | 123 TFLOP/s | 32 GiB | 900 GB/s | 2 | 96 (n1 host) |
| v4 | 275 TFLOP/s | 32 GiB | 1200 GB/s | 2 (megacore) | 240 |
| v5e | 197 TFLOP/s | 16 GB | 819 GB/s | 1 | 112 (ct5lp-hightpu-4t) |
| v5p | 459 TFLOP/s | 95 GB | 2765 GB/s | 2 (megacore) | 208 |
| v6e | 918 TFLOP/s | 32 GB | 1638 GB/s | 1 | 180 (ct6e-standard-4t) |

Float32: no TPU has a float32 MXU peak of its own. XLA runs a float32 convolution or dot at the
default precision as one bfloat16 pass with float32 accumulation (the compiled train step of a
float32 model shows its conv operands converted to bf16), so the bf16 peak is the MXU peak of
both compute dtypes here; ``precision=HIGHEST`` would take 6 bf16 passes (``peak_f32_highest``,
bf16 / 6, derived, not published).
"""

import dataclasses

SOURCES = {
    "v2": "https://cloud.google.com/tpu/docs/v2",
    "v3": "https://cloud.google.com/tpu/docs/v3",
    "v4": "https://cloud.google.com/tpu/docs/v4",
    "v5e": "https://cloud.google.com/tpu/docs/v5e",
    "v5p": "https://cloud.google.com/tpu/docs/v5p",
    "v6e": "https://cloud.google.com/tpu/docs/v6e",
}
HOST_SOURCES = {
    # vCPUs of the TPU VM of a multi-host slice (4 chips per host). v5e: the GCE machine types
    # ct5lp-hightpu-1t / -4t / -8t have 24 / 112 / 224 vCPUs (machine type list; the GKE TPU page
    # https://cloud.google.com/kubernetes-engine/docs/concepts/tpus). v6e: ct6e-standard-4t has
    # 180 vCPUs (https://cloud.google.com/tpu/docs/v6e). v4 (240) and v5p (208): the TPU VM
    # figures of https://cloud.google.com/tpu/docs/system-architecture-tpu-vm, not re-checked
    # here: uncertain. v2 / v3: n1 hosts with 96 vCPUs, uncertain.
    "v5e": "https://cloud.google.com/kubernetes-engine/docs/concepts/tpus",
    "v6e": "https://cloud.google.com/tpu/docs/v6e",
}


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip (all its TensorCores) and the VM host it sits in."""

    peak_bf16_flops: float  # FLOP/s per chip, published
    hbm_bytes_per_s: float  # bytes/s per chip, published (GB = 1e9 bytes)
    hbm_gb: float  # per chip, as published (GiB for v2-v4, GB for v5e-v6e)
    host_vcpus: int  # of a 4-chip host of a multi-host slice
    host_vcpus_certain: bool  # False: not confirmed against the page (see HOST_SOURCES)

    @property
    def peak_f32_highest_flops(self) -> float:
        """Float32 at ``precision=HIGHEST`` (6 bf16 passes): derived, not published."""
        return self.peak_bf16_flops / 6


CHIPS = {
    "v2": Chip(45e12, 600e9, 16, 96, False),
    "v3": Chip(123e12, 900e9, 32, 96, False),
    "v4": Chip(275e12, 1200e9, 32, 240, False),
    "v5e": Chip(197e12, 819e9, 16, 112, True),
    "v5p": Chip(459e12, 2765e9, 95, 208, False),
    "v6e": Chip(918e12, 1638e9, 32, 180, True),
}
# Single-host v5e / v6e slices: 1, 4 or 8 chips on one VM (ct5lp-hightpu-1t/4t/8t: 24/112/224 vCPUs;
# ct6e-standard-1t/4t/8t: 44/180/180 vCPUs).
SINGLE_HOST_VCPUS = {("v5e", 1): 24, ("v5e", 4): 112, ("v5e", 8): 224,
                     ("v6e", 1): 44, ("v6e", 4): 180, ("v6e", 8): 180}  # fmt: skip


def host_vcpus(family: str, chips_on_host: int) -> int:
    """vCPUs of one host VM of a slice with ``chips_on_host`` chips per host."""
    return SINGLE_HOST_VCPUS.get((family, chips_on_host), CHIPS[family].host_vcpus)
