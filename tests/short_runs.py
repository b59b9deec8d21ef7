"""A few jitted train steps through the harness, without eval or sample compiles."""

import jax

from t2ijax import parallel
from t2ijax.trainers import loop


def train_steps(config, workdir: str, num_steps: int) -> tuple[dict, object]:
  """num_steps jitted train steps on one device, then a checkpoint.

  Returns (the last step's metrics as floats, the state).
  """
  setup = loop.Setup(config, workdir, jax.devices()[:1])
  loop.write_config(config, workdir, setup.prepared.vocab)
  state, _ = setup.init_or_restore()
  step_fn = setup.jit_train_step()
  batches = setup.train_batches(0, num_steps)
  with jax.set_mesh(setup.mesh):
    for _ in range(num_steps):
      state, metrics = step_fn(state, parallel.global_batch(next(batches), setup.mesh))
  setup.checkpointer.save(num_steps, state, {'next_step': num_steps, 'seed': config.seed},
                          config)
  setup.checkpointer.close()
  return {k: float(v) for k, v in jax.device_get(metrics).items()}, state
