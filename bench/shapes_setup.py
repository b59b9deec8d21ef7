"""Shared set-up of the GAN benchmarks: tiny shapes data and a paper-size DAMSM.

Timing does not depend on the weights, so the DAMSM is one step of random-weight
training, and the other runs a method loads (StackGAN's Stage-I, MirrorGAN's
STREAM, GAN-INT-CLS's embedding pickles) are random too: nothing is downloaded.
"""

import os
import pickle

import jax
import numpy as np

from t2ijax import config_base
from t2ijax.encoders import damsm_loader
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
  if damsm_loader.finished(workdir):   # a --scratch dir of an earlier run
    return
  loop.train_and_evaluate(c, workdir, devices)


def fresh_run(c, workdir: str) -> None:
  """A "finished" run of config c in workdir without training: its freshly
  initialised state saved as the checkpoint of its last step (step 1).

  For runs another method loads (StackGAN's Stage-I, MirrorGAN's STREAM) when
  only the shapes of the weights matter. The method's `load_pretrained` (e.g.
  STREAM's ImageNet ResNet-152) is skipped: the weights stay random.
  """
  if damsm_loader.finished(workdir):
    return
  c.train.num_steps = 1
  c.checkpoint.use_async = False
  c.mesh.shape = (1, 1)
  setup = loop.Setup(c, workdir, jax.devices()[:1])
  loop.write_config(c, workdir, setup.prepared.vocab)
  state = jax.jit(setup.method.init_state, out_shardings=setup.state_shardings)(setup.rng)
  setup.checkpointer.save(1, state, {"next_step": 1, "seed": c.seed}, c)
  setup.checkpointer.close()


def write_embedding_pickles(data_config, out_dir: str, dim: int = 1024,
                            captions: int = 10) -> None:
  """Random stand-ins for the released char-CNN-RNN embedding pickles of the
  prepared data in data_config: <out_dir>/<split>/char-CNN-RNN-embeddings.pickle
  (N, captions, dim) and filenames.pickle, keyed like the data's examples."""
  from t2ijax.data import prepare
  source_of = prepare.prepare(data_config).source
  rng = np.random.default_rng(0)
  for split in (data_config.train_split, data_config.eval_split):
    source = source_of(split)
    keys = [source[i]["key"] for i in range(len(source))]
    keys = [k if isinstance(k, str) else k.decode() for k in keys]
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    emb = rng.standard_normal((len(keys), captions, dim)).astype(np.float32)
    with open(os.path.join(out_dir, split, "char-CNN-RNN-embeddings.pickle"), "wb") as f:
      pickle.dump(emb, f)
    with open(os.path.join(out_dir, split, "filenames.pickle"), "wb") as f:
      pickle.dump(keys, f)
