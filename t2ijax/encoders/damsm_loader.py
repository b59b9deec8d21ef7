"""Loads a trained DAMSM (from a t2ijax workdir) as frozen text and image encoders.

Other methods name the DAMSM run in `config.damsm.workdir`; its config.json says
how to rebuild the encoders, and its latest checkpoint holds their weights.
"""

import dataclasses
import json
import os

import jax
import ml_collections

from t2ijax import checkpoint as ckpt_lib


@dataclasses.dataclass
class FrozenDamsm:
  config: ml_collections.ConfigDict     # the DAMSM run's resolved config
  text_encoder: object                  # linen modules
  image_encoder: object
  text_variables: dict                  # host numpy trees
  image_variables: dict
  step: int

  @property
  def image_size(self) -> int:
    return max(self.config.data.image_sizes)


def load(workdir: str, vocab=None) -> FrozenDamsm:
  """The DAMSM of `workdir`; `vocab` (the GAN data's) must be the one it was trained on."""
  from t2ijax.trainers import damsm as damsm_trainer
  config = ckpt_lib.read_run_config(
      workdir, f"no DAMSM run in {workdir} (config.json missing): pretrain one with "
      "python -m t2ijax.main --config=configs/damsm.py:VARIANT --workdir=DIR and set "
      "--config.damsm.workdir=DIR")
  ckpt_lib.check_run_vocab(workdir, vocab, "the DAMSM", "damsm.workdir", config.data.source)
  method = damsm_trainer.DamsmMethod(config, vocab=None,
                                     num_train_examples=config.train.batch_size)
  state, position = ckpt_lib.restore_on_one_device(workdir, method.init_state)
  text_net, image_net = jax.device_get(state.nets["text"]), jax.device_get(state.nets["image"])
  return FrozenDamsm(
      config=config, text_encoder=method.text_encoder, image_encoder=method.image_encoder,
      text_variables=text_net.variables(), image_variables=image_net.variables(),
      step=int(position["next_step"]))


def finished(workdir: str) -> bool:
  """Whether a DAMSM run in workdir reached its configured number of steps."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    num_steps = json.load(f)["train"]["num_steps"]
  checkpoints = ckpt_lib.checkpoint_dir(workdir)
  steps = [int(s) for s in os.listdir(checkpoints) if s.isdigit()] if os.path.isdir(
      checkpoints) else []
  return bool(steps) and max(steps) >= num_steps

