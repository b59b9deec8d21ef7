"""The XLA CPU miscompile that t2ijax.xla_workarounds avoids stays avoided."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import t2ijax  # noqa: F401


def test_flag_is_installed():
  assert "xla_cpu_experimental_ynn_fusion_type" in os.environ["XLA_FLAGS"]


def test_broadcast_reduce_pattern_matches_numpy():
  rng = np.random.default_rng(0)
  b, t, d = 48, 18, 256
  w = rng.normal(size=(b, t, d)).astype(np.float32)
  c = rng.normal(size=(b, b, t, d)).astype(np.float32)
  got = jax.jit(lambda w, c: jnp.sum(w[None] * c, -1) + jnp.sum(c, -1))(w, c)
  want = (np.sum(w[None].astype(np.float64) * c, -1) + np.sum(c.astype(np.float64), -1))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-3)
