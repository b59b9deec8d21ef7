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
from t2ijax import errors
from t2ijax.data import text


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
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise errors.CheckpointError(
        f"no DAMSM run in {workdir} (config.json missing): pretrain one with "
        "python -m t2ijax.main --config=configs/damsm.py:VARIANT --workdir=DIR and set "
        "--config.damsm.workdir=DIR")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  vocab_path = os.path.join(workdir, "vocab.json")
  if vocab is not None and os.path.exists(vocab_path):
    with open(vocab_path) as f:
      damsm_vocab = text.Vocab.from_json(f.read())
    if damsm_vocab.fingerprint() != vocab.fingerprint():
      raise errors.CheckpointError(
          f"the DAMSM in {workdir} was trained with another vocabulary ({len(damsm_vocab)} "
          f"words) than this data set's ({len(vocab)} words): pretrain the DAMSM on the "
          f"same data source ({config.data.source!r} there) and captions, or point "
          "--config.damsm.workdir at a matching run")
  method = damsm_trainer.DamsmMethod(config, vocab=None,
                                     num_train_examples=config.train.batch_size)
  abstract = jax.eval_shape(method.init_state, jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  checkpointer = ckpt_lib.Checkpointer(workdir, use_async=False)
  try:
    state, position, _ = checkpointer.restore(abstract)
  finally:
    checkpointer.close()
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

