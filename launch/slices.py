"""Cloud TPU accelerator types for the launcher: chips, JAX devices, hosts, runtime image.

``TpuSlice`` is defined once, in ``mobiledet_jax.tpu_slices`` (standard library only, so the
launcher still runs without JAX); its module docstring has the table of families. The AOT compile
(``mobiledet_jax.aot_compile --topology=<TpuSlice.topology>``) parses the same names with the same
class.
"""

from mobiledet_jax.tpu_slices import TpuSlice

__all__ = ["TpuSlice"]
