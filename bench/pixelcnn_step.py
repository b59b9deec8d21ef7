r"""The PixelCNN train step's loss and gradient: fused last layer vs plain autodiff.

  python bench/pixelcnn_step.py --out=bench/out/pixelcnn_step.json \
      [--batch=16] [--sizes=8x24,8x48,12x48] [--repeats=10]

Per decoder size (layers x features; the demo is 8x24, batch 16, 32x32x3), the
jitted value-and-gradient of the mean bits/dim two ways, on the same random
weights and batch, alternating so that both see the same load:
  fused  what training runs (t2ijax/trainers/pixelcnn.py): the network up to its
         last layer, then likelihood.dense_log_prob (that layer and the 256-way
         softmaxes with a hand-written gradient);
  plain  the model's logits into likelihood.image_bits_per_dim, all autodiff.
The JSON has both times (wall and process CPU, best of --repeats), their ratio
and the largest relative difference between the two gradients.
"""

import os
import platform
import sys
import time

from absl import app
from absl import flags

import t2ijax  # noqa: F401  (XLA flags before jax starts)
import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from t2ijax.losses import likelihood
from t2ijax.models import pixelcnn as model_lib

import json_out  # bench/, the script's own folder
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'bench/out/pixelcnn_step.json', 'JSON output path')
flags.DEFINE_integer('batch', 16, 'images per step')
flags.DEFINE_string('sizes', '8x24,8x48,12x48', 'decoders as layers x features')
flags.DEFINE_integer('repeats', 10, 'timed calls of each (the best is kept)')

SIZE = 32


def _timed(fn, *args):
  """(wall, process CPU) seconds of one call."""
  w, c = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - w, time.process_time() - c


def _measure(layers: int, features: int) -> dict:
  model = model_lib.PixelCnnModel(
      condition='none', image_size=SIZE, num_layers=layers, features=features,
      kernel_size=3, first_kernel_size=5, skip_features=features,
      head_features=2 * features)
  images = jax.random.randint(jax.random.key(1), (FLAGS.batch, SIZE, SIZE, 3), 0, 256)
  params = model.init(jax.random.key(0), images)['params']

  # The batch is an argument, as in training (a closed-over one would be folded
  # into the compiled step as a constant).
  def fused(p, x):
    kernel, bias = model_lib.head_kernel(p)
    features_ = model.apply({'params': p}, x, logits=False)
    return jnp.mean(likelihood.dense_bits_per_dim(features_, kernel, bias, x))

  def plain(p, x):
    return jnp.mean(likelihood.image_bits_per_dim(model.apply({'params': p}, x), x))

  fns = {name: jax.jit(jax.value_and_grad(f)) for name, f in
         (('fused', fused), ('plain', plain))}
  grads = {name: jax.block_until_ready(fn(params, images))[1] for name, fn in fns.items()}
  rel = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12)),
                     grads['fused'], grads['plain'])
  best = {name: [float('inf'), float('inf')] for name in fns}
  for _ in range(FLAGS.repeats):       # alternate, so both see the same load
    for name, fn in fns.items():
      wall, cpu = _timed(fn, params, images)
      best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
  return {
      'layers': layers, 'features': features,
      'seconds_per_step': {name: {'wall': w, 'cpu': c} for name, (w, c) in best.items()},
      'speedup': {'wall': best['plain'][0] / best['fused'][0],
                  'cpu': best['plain'][1] / best['fused'][1]},
      'max_relative_gradient_difference': max(jax.tree.leaves(rel))}


def main(argv):
  del argv
  results = []
  for size in FLAGS.sizes.split(','):
    layers, features = (int(v) for v in size.split('x'))
    r = _measure(layers, features)
    results.append(r)
    print(f"{layers}x{features}: fused {r['seconds_per_step']['fused']['wall'] * 1e3:.0f} ms, "
          f"plain {r['seconds_per_step']['plain']['wall'] * 1e3:.0f} ms, "
          f"{r['speedup']['wall']:.2f}x (gradients agree to "
          f"{r['max_relative_gradient_difference']:.1e})", flush=True)
  report = {
      'benchmark': 'pixelcnn_step', 'image': [SIZE, SIZE, 3], 'batch': FLAGS.batch,
      'kernel_size': 3, 'first_kernel_size': 5,
      'what': 'jitted value_and_grad of mean bits/dim (no optimizer update)',
      'results': results,
      'cpus_available': len(os.sched_getaffinity(0)),
      'load_average_at_end': os.getloadavg(),
      'platform': platform.platform(), 'processor': platform.processor(),
      'jax': jax.__version__, 'backend': jax.default_backend()}
  json_out.write(report, FLAGS.out)


if __name__ == '__main__':
  app.run(main)
