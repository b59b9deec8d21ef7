"""What the training harness needs from a method (DAMSM, a GAN family, PixelCNN).

The harness owns the mesh, data, jit, checkpoints, logging and the loop; a method
owns its networks, optimizers, losses and pictures. All jitted functions are pure:
they take and return arrays (the TrainState and a batch of global arrays).
"""

from typing import Any, Mapping

import jax
import numpy as np

from t2ijax.trainers import state as state_lib


class Method:
  """Base class; subclasses fill in the hooks."""

  # How many attribute labels a batch carries (shapes only); set from the data.
  def __init__(self, config, vocab, num_train_examples: int):
    self.config = config
    self.vocab = vocab
    self.num_train_examples = num_train_examples

  def init_state(self, rng: jax.Array) -> state_lib.TrainState:
    """Fresh parameters, batch statistics and optimizer states (jittable)."""
    raise NotImplementedError

  def load_pretrained(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """Replaces freshly initialised parts by pretrained weights (host side, once)."""
    return state

  def train_step(self, state: state_lib.TrainState, batch: Mapping[str, jax.Array]
                 ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer step of every network (jittable, pure)."""
    raise NotImplementedError

  def eval_step(self, state: state_lib.TrainState, batch: Mapping[str, jax.Array]
                ) -> dict[str, jax.Array]:
    """Per-batch evaluation outputs (jittable, pure)."""
    raise NotImplementedError

  def begin_eval(self) -> None:
    """Called before the first eval_step of an evaluation."""

  def eval_output_on_host(self, output: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One batch's eval_step output, on the host, before it is kept for
    summarize_eval. A method may shrink it here (the GANs turn images into
    Inception statistics), so that an evaluation of many images never holds
    them all."""
    return output

  def summarize_eval(self, outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Host-side reduction of eval_step outputs to scalars."""
    raise NotImplementedError

  def sample_grid(self, state: state_lib.TrainState, batch: Mapping[str, Any]
                  ) -> np.ndarray | None:
    """A uint8 (H, W, 3) picture of what the model does now, or None."""
    return None
