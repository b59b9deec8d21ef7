"""t2ijax: the classic text-to-image models in JAX/Flax."""

from t2ijax import xla_workarounds  # noqa: F401  (before jax starts its backend)

__version__ = "0.1.0"
