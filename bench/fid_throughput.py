r"""FID feature throughput (images/s) at 299x299: Flax Inception vs PyTorch.

  python bench/fid_throughput.py --out=bench/out/fid_throughput.json \
      [--batch=16] [--repeats=3]

Both networks are pytorch-fid's Inception-v3 (FID flavour, 1008-way fc) with
the same random weights: the PyTorch model is built as tests/test_inception.py
builds it, and its state dict is converted with t2ijax.convert.torch_inception.
Timed, per batch of 299x299 images already in [0, 1]:
  torch            model(2x - 1) under no_grad, eval mode, NCHW float32, at
                   torch's default threads and (when that is more) at 1;
  flax_jit         jit(apply(fid_preprocess(x))) on a device-resident batch;
  flax_extractor   features.FidInception from host uint8 batches (transfer,
                   preprocessing, sharded call, results back to the host).
Medians of interleaved runs (forward, then backward order) so that load from
other processes on a shared machine hits all of them alike; the 1-minute load
average is recorded. Also reports the largest
pool3 difference between the two frameworks on the timed batch.
"""

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

import t2ijax  # noqa: F401  (XLA flags before jax starts)
import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import torch
from t2ijax.convert import torch_inception
from t2ijax.encoders import inception
from t2ijax.evaluation import features
from tests import test_inception

import json_out  # bench/, the script's own folder
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'bench/out/fid_throughput.json', 'JSON output path')
flags.DEFINE_integer('batch', 16, 'images per call')
flags.DEFINE_integer('repeats', 3, 'timed calls per framework after warm-up')


def _time(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv):
  del argv
  batch = FLAGS.batch
  size = inception.FID_IMAGE_SIZE
  torch_model = test_inception._randomised_torch_inception('fid', 1008, seed=0)  # pylint: disable=protected-access
  variables = torch_inception.inception_variables_from_state_dict(
      torch_model.state_dict(), 'fid')

  rng = np.random.default_rng(0)
  images_u8 = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
  images_01 = images_u8.astype(np.float32) / 255.0
  images_nchw = torch.from_numpy(np.ascontiguousarray(
      images_01.transpose(0, 3, 1, 2)))

  default_threads = torch.get_num_threads()

  def run_torch(threads=default_threads):
    torch.set_num_threads(threads)
    with torch.no_grad():
      return torch_model(images_nchw * 2 - 1)['pool3'].numpy()

  model = inception.InceptionV3('fid', num_classes=1008,
                                precision=jax.lax.Precision.HIGHEST)
  device_variables = jax.device_put(variables)
  device_images = jax.device_put(images_01)
  flax_apply = jax.jit(lambda v, x: model.apply(
      v, inception.fid_preprocess(x))['pool3'])

  def run_flax():
    return jax.block_until_ready(flax_apply(device_variables, device_images))

  extractor = features.FidInception(model, variables, batch_size=batch)

  def run_extractor():
    return extractor(images_u8)['pool3']

  runs = [('torch', run_torch), ('flax_jit', run_flax),
          ('flax_extractor', run_extractor)]
  if default_threads > 1:
    # On a loaded machine OpenMP's barriers can make more threads slower;
    # report torch's better setting too, so the comparison is not flattered.
    runs.append(('torch_1_thread', lambda: run_torch(1)))
  load_before = os.getloadavg()
  compile_seconds = _time(run_flax)
  for _, fn in runs[1:]:
    fn()  # Warm-up (the first jit call above compiled flax_jit).
  run_torch()
  seconds = {name: [] for name, _ in runs}
  for i in range(FLAGS.repeats):
    for name, fn in (runs if i % 2 == 0 else runs[::-1]):
      seconds[name].append(_time(fn))
  per_second = {k: batch / float(np.median(v)) for k, v in seconds.items()}
  best_torch = max(v for k, v in per_second.items() if k.startswith('torch'))

  want, got = run_torch(), np.asarray(run_flax())
  report = {
      'benchmark': 'fid_feature_throughput',
      'image_size': size, 'batch': batch, 'repeats': FLAGS.repeats,
      'images_per_second': per_second,
      'flax_jit_over_best_torch': per_second['flax_jit'] / best_torch,
      'flax_extractor_over_best_torch':
          per_second['flax_extractor'] / best_torch,
      'seconds_per_batch': seconds,
      'load_average_1min_before_after': [load_before[0], os.getloadavg()[0]],
      'flax_first_call_seconds_incl_compile': compile_seconds,
      'pool3_max_abs_difference': float(np.max(np.abs(got - want))),
      'pool3_max_abs': float(np.max(np.abs(want))),
      'device': str(jax.devices()[0].device_kind),
      'platform': jax.default_backend(), 'num_devices': jax.device_count(),
      'jax': jax.__version__, 'torch': torch.__version__,
      'torch_default_threads': default_threads,
      'python': sys.version.split()[0], 'machine': platform.machine(),
      'cpu_count': os.cpu_count(),
  }
  print(json.dumps(report, indent=2))
  json_out.write(report, FLAGS.out)


if __name__ == '__main__':
  app.run(main)
