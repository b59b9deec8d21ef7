r"""Cached vs naive PixelCNN sampling at 32x32x3, 15 gated layers.

  python bench/pixelcnn_sampling.py --out=bench/out/pixelcnn_sampling.json \
      [--batch=8] [--features=24] [--naive_steps=24]

Naive sampling runs the whole decoder once per sub-pixel (3072 forwards for a
32x32x3 image); every step costs the same full forward, so it is timed on its
first --naive_steps sub-pixels and scaled to 3072 (the JSON says so). The cached
sampler (t2ijax/trainers/pixelcnn_sampling.py) draws whole images. Both are
jitted and run once to compile before timing. Wall time and process CPU time
(all threads) are both recorded: on a shared machine the CPU time is the fairer
measure of work. Random weights; the model is the demo's width with 15 layers.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from t2ijax.models import pixelcnn as model_lib
from t2ijax.trainers import pixelcnn_sampling as sampling
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'bench/out/pixelcnn_sampling.json', 'JSON output path')
flags.DEFINE_integer('batch', 8, 'images sampled at once')
flags.DEFINE_integer('features', 24, 'p (hidden maps per stack)')
flags.DEFINE_integer('layers', 15, 'gated layers')
flags.DEFINE_integer('naive_steps', 24, 'sub-pixels the naive sampler is timed on')
flags.DEFINE_integer('repeats', 2, 'timed runs of each sampler')

SIZE = 32


def _timed(fn, repeats):
  walls, cpus = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return min(walls), min(cpus)


def main(argv):
  del argv
  p = FLAGS.features
  model = model_lib.PixelCnnModel(
      condition='none', image_size=SIZE, num_layers=FLAGS.layers, features=p,
      kernel_size=3, first_kernel_size=5, skip_features=p, head_features=2 * p)
  params = model.init(jax.random.key(0), jax.numpy.zeros((1, SIZE, SIZE, 3)))['params']
  key, b = jax.random.key(1), FLAGS.batch
  cached = jax.jit(lambda pp: sampling.cached_sample(model, pp, None, None, key, b))
  naive = jax.jit(lambda pp: sampling.naive_sample(model, pp, None, None, key, b,
                                                   num_steps=FLAGS.naive_steps))
  start = time.perf_counter()
  jax.block_until_ready(cached(params))
  cached_compile = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(naive(params))
  naive_compile = time.perf_counter() - start
  cached_wall, cached_cpu = _timed(lambda: cached(params), FLAGS.repeats)
  naive_wall, naive_cpu = _timed(lambda: naive(params), FLAGS.repeats)
  total = SIZE * SIZE * 3
  scale = total / FLAGS.naive_steps
  result = {
      'benchmark': 'pixelcnn_sampling',
      'image': [SIZE, SIZE, 3], 'layers': FLAGS.layers, 'features': p,
      'kernel_size': 3, 'first_kernel_size': 5, 'batch': b,
      'cached_seconds_per_batch': {'wall': cached_wall, 'cpu': cached_cpu},
      'naive_seconds_per_batch_extrapolated': {'wall': naive_wall * scale,
                                               'cpu': naive_cpu * scale},
      'naive_timed_subpixels': FLAGS.naive_steps,
      'naive_seconds_per_subpixel': {'wall': naive_wall / FLAGS.naive_steps,
                                     'cpu': naive_cpu / FLAGS.naive_steps},
      'speedup': {'wall': naive_wall * scale / cached_wall,
                  'cpu': naive_cpu * scale / cached_cpu},
      'cached_images_per_second_wall': b / cached_wall,
      'compile_seconds': {'cached': cached_compile, 'naive': naive_compile},
      'load_average_1min': os.getloadavg()[0],
      'cpu_count': os.cpu_count(),
      'platform': platform.platform(),
      'jax': jax.__version__,
      'device': jax.devices()[0].device_kind,
  }
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  app.run(main)
