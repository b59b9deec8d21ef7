"""Test setup: eight fake CPU devices (for sharding tests) and tiny configs.

The device count must be set before jax initialises its backend, hence here.
"""

import os
import sys

import t2ijax  # noqa: F401  (installs XLA flags before jax starts)
import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import tiny_configs  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared-data directory shared by all tests of a session."""
  return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def tiny_damsm(data_dir):
  return tiny_configs.damsm(data_dir)


@pytest.fixture(scope="session")
def damsm_dir(tmp_path_factory, data_dir):
  """A finished tiny DAMSM run whose vocabulary the tiny GAN configs share.

  Trained once per session: every GAN test only reads it.
  """
  from t2ijax.trainers import loop  # noqa: E402  (after the device count is set)
  workdir = str(tmp_path_factory.mktemp("damsm"))
  loop.train_and_evaluate(tiny_configs.damsm_for_gan(data_dir), workdir, jax.devices()[:1])
  return workdir


def pytest_configure(config):
  del config
  # Identical programs (inits, steps) recur across tests and subprocesses:
  # a persistent compilation cache turns repeat compiles into loads.
  cache = os.path.join(ROOT, ".pytest_cache", "jax_compilation")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
