"""Shared set-up of the GAN benchmarks: tiny shapes data and a paper-size DAMSM.

Timing does not depend on the weights, so the DAMSM is one step of random-weight
training: nothing is downloaded.
"""

import os

from t2ijax import config_base
from t2ijax.trainers import loop

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def use_shapes(c, data_dir: str, size: int) -> None:
  """Points config c at a small built-in shapes set rendered at `size` pixels."""
  c.data.source = "shapes"
  c.data.data_dir = data_dir
  c.data.captions_per_image = 10
  c.data.max_words = 18
  c.data.shapes.update(num_train=64, num_test=16, image_size=size)
  c.data.num_parallel_calls = 2


def pretrain_damsm(workdir: str, data_dir: str, devices=None) -> None:
  """One step of the CUB DAMSM (Inception-v3) into workdir, for the GANs to load.

  devices: run on these only (the mesh becomes (1, 1) when one is given);
  None: the default mesh over all devices.
  """
  c = config_base.load_config_file(os.path.join(CONFIGS, "damsm.py"), "cub")
  use_shapes(c, data_dir, 299)
  c.data.image_sizes = (299,)
  c.model.backbone_trainable = True      # random Inception weights: no download
  c.train.update(batch_size=2, num_steps=1)
  c.eval.update(batch_size=2, num_batches=1)
  c.log.sample_every_steps = -1
  if devices is not None:
    c.mesh.shape = (len(devices), 1)
  loop.train_and_evaluate(c, workdir, devices)
