"""Cloud TPU slices: the one table of TPU families, and accelerator types such as ``v4-32`` parsed.

Standard library only: the launcher (``launch/``) imports it on a machine without JAX, and
``mobiledet_jax.training.aot`` builds the compile-only devices of a slice from it.

An accelerator type is ``<family>-<N>``. What N counts depends on the family (Cloud TPU docs,
"TPU versions" and "TPU software versions"):

| family | N counts | JAX devices | HBM per device | chips per host (multi-host) | single-host slices | runtime image |
|---|---|---|---|---|---|---|
| v2, v3 | TensorCores | N (one per core) | 8, 16 GiB | 4 (8 cores) | N = 8 | tpu-ubuntu2204-base |
| v4 | TensorCores | N / 2 (megacore) | 32 GiB | 4 | N = 8 | tpu-ubuntu2204-base |
| v5p | TensorCores | N / 2 (megacore) | 95 GiB | 4 | N = 8 | v2-alpha-tpuv5 |
| v5e (gcloud: v5litepod) | chips | N | 16 GiB | 4 | N <= 8 (1, 4 or 8 chips) | v2-alpha-tpuv5-lite |
| v6e | chips | N | 32 GiB | 4 | N <= 8 (1, 4 or 8 chips) | v2-alpha-tpuv6e |

So v4-32 is 16 chips on 4 hosts; v5e-16 (``v5litepod-16``) is 16 chips on 4 hosts; v5e-8 is one host
with 8 chips. The global batch must divide by the number of JAX devices (the data axis of the mesh).
Slices have a power-of-two number of chips (1, 4, 8, 16, ...; v5e/v6e at most 256), laid out as a
2-D (v2, v3, v5e, v6e) or 3-D (v4, v5p) torus: from 2x2 (2x2x1), double the smallest axis, the last
one on ties (v4-32 = 2x2x4, v5e-256 = 16x16).
"""

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Family:
    """What a TPU generation is, for slicing, compiling and launching."""

    libtpu: str  # the generation in libtpu's topology names ("v5" is v5p)
    dims: int  # 2-D torus (v2, v3, v5e, v6e) or 3-D (v4, v5p)
    counts_cores: bool  # N of <family>-<N> counts TensorCores (2 per chip), else chips
    megacore: bool  # one JAX device per chip (both cores), else one per core
    hbm_gib: float  # per JAX device
    runtime: str  # the TPU VM runtime image (gcloud --version)


FAMILIES = {
    "v2": Family("v2", 2, True, False, 8, "tpu-ubuntu2204-base"),
    "v3": Family("v3", 2, True, False, 16, "tpu-ubuntu2204-base"),
    "v4": Family("v4", 3, True, True, 32, "tpu-ubuntu2204-base"),
    "v5p": Family("v5", 3, True, True, 95, "v2-alpha-tpuv5"),
    "v5e": Family("v5e", 2, False, False, 16, "v2-alpha-tpuv5-lite"),
    "v6e": Family("v6e", 2, False, False, 32, "v2-alpha-tpuv6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}
GCLOUD_NAMES = {"v5e": "v5litepod"}  # gcloud's --accelerator-type spelling, where it differs
CHIP_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)  # v5e / v6e slice sizes in chips


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """One Cloud TPU slice shape, parsed from an accelerator type such as ``v4-32``."""

    family: str  # v2, v3, v4, v5p, v5e, v6e
    size: int  # the N of the accelerator type

    @classmethod
    def parse(cls, accelerator: str) -> "TpuSlice":
        m = re.fullmatch(r"([a-z0-9]+?)-(\d+)", accelerator.strip().lower())
        if not m:
            raise ValueError(
                f"accelerator type {accelerator!r} is not <family>-<N>, e.g. v4-32 or v5e-256"
            )
        family, size = ALIASES.get(m.group(1), m.group(1)), int(m.group(2))
        if family not in FAMILIES:
            raise ValueError(
                f"unknown TPU family {m.group(1)!r} in {accelerator!r}; "
                f"known: {sorted(FAMILIES)} (v5litepod-N is v5e-N)"
            )
        if FAMILIES[family].counts_cores:
            if size < 8 or size % 8:
                raise ValueError(
                    f"{accelerator}: {family}-N counts TensorCores, N is a multiple of 8"
                )
            if size & (size - 1):
                raise ValueError(
                    f"{accelerator}: {size // 2} chips; {family} slices have 4, 8, 16, ... chips"
                )
        elif size not in CHIP_SIZES:
            raise ValueError(f"{accelerator}: {family} slices have {CHIP_SIZES} chips")
        return cls(family, size)

    @property
    def facts(self) -> Family:
        return FAMILIES[self.family]

    @property
    def chips(self) -> int:
        return self.size // 2 if self.facts.counts_cores else self.size

    @property
    def devices(self) -> int:
        """``jax.device_count()`` on the slice (v2/v3 expose each TensorCore as a device)."""
        if self.facts.megacore or not self.facts.counts_cores:
            return self.chips
        return self.size

    @property
    def hosts(self) -> int:
        """TPU VM workers (``--worker=0..hosts-1``)."""
        if self.facts.counts_cores:
            return max(1, self.chips // 4)
        return 1 if self.chips <= 8 else self.chips // 4

    @property
    def hbm_gib(self) -> float:
        """HBM of one JAX device, GiB."""
        return self.facts.hbm_gib

    @property
    def gcloud_type(self) -> str:
        """The ``--accelerator-type`` gcloud expects (v5e is spelled ``v5litepod``)."""
        return f"{GCLOUD_NAMES.get(self.family, self.family)}-{self.size}"

    @property
    def topology(self) -> str:
        """The name passed to ``mobiledet_jax.aot_compile --topology`` and used to key the cache."""
        return f"{self.family}-{self.size}"

    @property
    def runtime_version(self) -> str:
        return self.facts.runtime

    @property
    def shape(self) -> tuple[int, ...]:
        """Chips along each torus axis (see the module docstring)."""
        if self.chips == 1:
            return (1,) * self.facts.dims
        shape = [2, 2] + [1] * (self.facts.dims - 2)
        while math.prod(shape) < self.chips:
            i = max(j for j, s in enumerate(shape) if s == min(shape))
            shape[i] *= 2
        return tuple(shape)

    @property
    def libtpu_name(self) -> str:
        """libtpu's topology name, e.g. ``v4:2x2x4`` for v4-32."""
        return f"{self.facts.libtpu}:{'x'.join(map(str, self.shape))}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """The whole slice on a single host (1, 4 or 8 chips), else 4 chips (2x2) per host."""
        if self.hosts == 1:
            return (*self.shape, 1, 1)[:3]
        return (2, 2, 1)

    def describe(self) -> str:
        return (
            f"{self.gcloud_type}: {self.chips} chips, {self.devices} JAX devices, "
            f"{self.hosts} host{'s' if self.hosts > 1 else ''}"
        )
