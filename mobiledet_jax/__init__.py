"""mobiledet_jax: MobileDet object detectors in JAX/Flax."""

__version__ = "0.1.0"
