"""Cloud TPU accelerator types: chips, JAX devices, hosts, runtime image and AOT topology name.

An accelerator type is ``<family>-<N>``. What N counts depends on the family (Cloud TPU docs,
"TPU versions" and "TPU software versions"):

| family | N counts | JAX devices | chips per host (multi-host) | single-host slices | runtime image |
|---|---|---|---|---|---|
| v2, v3 | TensorCores | N (one per core) | 4 (8 cores) | N = 8 | tpu-ubuntu2204-base |
| v4 | TensorCores | N / 2 (megacore) | 4 | N = 8 | tpu-ubuntu2204-base |
| v5p | TensorCores | N / 2 (megacore) | 4 | N = 8 | v2-alpha-tpuv5 |
| v5e (gcloud: v5litepod) | chips | N | 4 | N <= 8 (1, 4 or 8 chips) | v2-alpha-tpuv5-lite |
| v6e | chips | N | 4 | N <= 8 (1, 4 or 8 chips) | v2-alpha-tpuv6e |

So v4-32 is 16 chips on 4 hosts; v5e-16 (``v5litepod-16``) is 16 chips on 4 hosts; v5e-8 is one host
with 8 chips. The global batch must divide by the number of JAX devices (the data axis of the mesh).
"""

import dataclasses
import re

_RUNTIME = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5e": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}
_COUNTS_CORES = ("v2", "v3", "v4", "v5p")  # N = TensorCores (2 per chip)
_CHIP_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)  # v5e / v6e slice sizes in chips


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """One Cloud TPU slice shape, parsed from an accelerator type such as ``v4-32``."""

    family: str  # v2, v3, v4, v5p, v5e, v6e
    size: int  # the N of the accelerator type

    @classmethod
    def parse(cls, accelerator: str) -> "TpuSlice":
        m = re.fullmatch(r"([a-z0-9]+?)-(\d+)", accelerator.strip().lower())
        if not m:
            raise ValueError(f"accelerator type {accelerator!r} is not <family>-<N>, e.g. v4-32")
        family = _ALIASES.get(m.group(1), m.group(1))
        size = int(m.group(2))
        if family not in _RUNTIME:
            raise ValueError(
                f"unknown TPU family {m.group(1)!r} in {accelerator!r}; "
                f"known: {sorted(_RUNTIME)} (v5litepod-N is v5e-N)"
            )
        if family in _COUNTS_CORES and (size < 8 or size % 8):
            raise ValueError(f"{accelerator}: {family}-N counts TensorCores, N is a multiple of 8")
        if family not in _COUNTS_CORES and size not in _CHIP_SIZES:
            raise ValueError(f"{accelerator}: {family} slices have {_CHIP_SIZES} chips")
        return cls(family, size)

    @property
    def chips(self) -> int:
        return self.size // 2 if self.family in _COUNTS_CORES else self.size

    @property
    def devices(self) -> int:
        """``jax.device_count()`` on the slice (v2/v3 expose each TensorCore as a device)."""
        return self.size if self.family in ("v2", "v3") else self.chips

    @property
    def hosts(self) -> int:
        """TPU VM workers (``--worker=0..hosts-1``)."""
        if self.family in _COUNTS_CORES:
            return max(1, self.chips // 4)
        return 1 if self.chips <= 8 else self.chips // 4

    @property
    def gcloud_type(self) -> str:
        """The ``--accelerator-type`` gcloud expects (v5e is spelled ``v5litepod``)."""
        family = "v5litepod" if self.family == "v5e" else self.family
        return f"{family}-{self.size}"

    @property
    def topology(self) -> str:
        """The name passed to ``mobiledet_jax.aot_compile --topology`` and used to key the cache."""
        return f"{self.family}-{self.size}"

    @property
    def runtime_version(self) -> str:
        return _RUNTIME[self.family]

    def describe(self) -> str:
        return (
            f"{self.gcloud_type}: {self.chips} chips, {self.devices} JAX devices, "
            f"{self.hosts} host{'s' if self.hosts > 1 else ''}"
        )
