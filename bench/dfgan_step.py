r"""DF-GAN train step (D with MA-GP + G), t2ijax vs the official PyTorch form, as JSON.

  python bench/dfgan_step.py --out=bench/out/dfgan_step.json [--sizes=64,256] [--batch=8]
      [--cores=1] [--append]

One step = NetD+NetC's Adam step on hinge + mismatch + MA-GP (double backprop)
and NetG's Adam step on -D(fake), official widths (nf 32, z 100, sentence 256).
t2ijax runs `DfGan.train_step` (jitted, state donated) with the sentence
embeddings given (the frozen DAMSM is left out on both sides); PyTorch runs the
official modules written from the reference (tests/torch_dfgan_reference.py) on
the CPU. The machine is shared, so the two are timed in alternating rounds
of a few steps each (the side going first alternates), and medians are
reported with every round's time. --cores=1 pins the process to one CPU and
gives torch one thread: on a loaded machine that is the compute-bound
comparison, while the default (all CPUs, torch's default threads) is what
either program gets as launched; torch's OpenMP threads suffer most from
other processes there.

  python bench/dfgan_step.py --cores=1 --out=bench/dfgan_step_cpu.json
  python bench/dfgan_step.py --append --out=bench/dfgan_step_cpu.json
"""

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _pin_from_argv() -> None:
  """--cores=N: run on the first N CPUs, before jax or torch start threads."""
  for arg in sys.argv[1:]:
    if arg.startswith('--cores='):
      n = int(arg.split('=', 1)[1])
      if n > 0:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])


_pin_from_argv()

import t2ijax  # noqa: E402,F401  (XLA flags before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from t2ijax import config_base  # noqa: E402
from t2ijax.trainers import dfgan as dfgan_trainer  # noqa: E402
from tests import torch_dfgan_reference as ref  # noqa: E402

import json_out  # noqa: E402  (bench/, the script's own folder)

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'bench/out/dfgan_step.json', 'JSON output path')
flags.DEFINE_string('sizes', '64,256', 'image sizes')
flags.DEFINE_integer('batch', 8, 'batch size')
flags.DEFINE_integer('rounds', 5, 'alternating timing rounds')
flags.DEFINE_integer('steps', 2, 'steps per round and side')
flags.DEFINE_integer('cores', 0, 'pin the process to this many CPUs (0: all); torch '
                     'uses as many threads')
flags.DEFINE_bool('append', False, 'add this run to the runs already in --out')

NF, Z_DIM, NEF = 32, 100, 256


class _Method(dfgan_trainer.DfGan):
  """DfGan without its DAMSM: the batch carries the sentence embeddings."""

  def __init__(self, config):  # pylint: disable=super-init-not-called
    import optax
    self.config = config
    self.sizes = list(config.data.image_sizes)
    self.generator = self.make_generator()
    self.discriminators = [self.make_discriminator(self.sizes[0])]
    o = config.optim
    self.txs = {'G': optax.adam(o.g_lr, o.b1, o.b2), 'D0': optax.adam(o.d_lr, o.b1, o.b2)}

  def encode_text(self, state, ids, lengths):
    del state, lengths
    return None, ids, None      # 'caption' holds the (B, 256) sentence here


def _jax_side(size, batch):
  config = config_base.load_config_file(os.path.join(ROOT, 'configs', 'dfgan.py'), 'cub')
  config.data.image_sizes = (size,)
  config.model.nef = NEF
  method = _Method(config)
  k_g, k_d = jax.random.split(jax.random.key(0, impl='rbg'))
  g = method.generator.init(k_g, jnp.zeros((2, Z_DIM)), jnp.zeros((2, NEF)))['params']
  d = method.discriminators[0].init(k_d, jnp.zeros((2, size, size, 3)),
                                    jnp.zeros((2, NEF)))['params']
  from t2ijax.trainers import state as state_lib
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(1)),
      nets={'G': state_lib.new_net(g, method.txs['G']),
            'D0': state_lib.new_net(d, method.txs['D0'])})
  rng = np.random.default_rng(0)
  data = {'caption': jnp.asarray(rng.standard_normal((batch, NEF)), jnp.float32),
          'caption_len': jnp.zeros((batch,), jnp.int32),
          f'image{size}': jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.uint8)}
  step = jax.jit(method.train_step, donate_argnums=(0,))
  start = time.perf_counter()
  state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def run(n):
    s = holder['state']
    for _ in range(n):
      s, m = step(s, data)
    jax.block_until_ready((s, m))
    holder['state'] = s

  params = {k: int(sum(x.size for x in jax.tree.leaves(v.params)))
            for k, v in state.nets.items()}
  return run, compile_s, params


def _torch_side(size, batch):
  torch.manual_seed(0)
  netG, netD, netC = ref.NetG(NF, Z_DIM, NEF, size), ref.NetD(NF, size), ref.NetC(NF, NEF)
  opt_g, opt_d = ref.optimizers(netG, netD, netC)
  image = torch.rand(batch, 3, size, size) * 2 - 1
  sentence = torch.randn(batch, NEF)

  def run(n):
    for _ in range(n):
      noise = torch.randn(batch, Z_DIM)
      ref.train_step(netG, netD, netC, opt_g, opt_d, image.clone(), sentence.clone(), noise)

  start = time.perf_counter()
  run(1)
  return run, time.perf_counter() - start


def _time(run, n):
  start = time.perf_counter()
  run(n)
  return (time.perf_counter() - start) / n


def main(argv):
  del argv
  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  results = []
  for size in (int(s) for s in FLAGS.sizes.split(',')):
    jax_run, compile_s, params = _jax_side(size, FLAGS.batch)
    torch_run, torch_first = _torch_side(size, FLAGS.batch)
    jax_times, torch_times = [], []
    for r in range(FLAGS.rounds):
      # Alternate which side goes first, so drifts in the load hit both alike.
      order = ((jax_times, jax_run), (torch_times, torch_run))
      for times, run in (order if r % 2 == 0 else order[::-1]):
        times.append(_time(run, FLAGS.steps))
    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    r = {'image_size': size, 'batch': FLAGS.batch, 'nf': NF,
         't2ijax_seconds_per_step': jax_s, 'torch_seconds_per_step': torch_s,
         't2ijax_images_per_second': FLAGS.batch / jax_s,
         'torch_images_per_second': FLAGS.batch / torch_s,
         'speedup_t2ijax_over_torch': torch_s / jax_s,
         't2ijax_round_seconds': jax_times, 'torch_round_seconds': torch_times,
         't2ijax_first_step_seconds_incl_compile': compile_s,
         'torch_first_step_seconds': torch_first, 'parameters': params}
    print(json.dumps(r), flush=True)
    results.append(r)
  report = {'benchmark': 'dfgan_train_step', 'device': str(jax.devices()[0].device_kind),
            'platform': jax.default_backend(), 'jax': jax.__version__,
            'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
            'python': sys.version.split()[0], 'machine': platform.machine(),
            'cpu_count': os.cpu_count(), 'cores_used': cores,
            'load_average_at_end': os.getloadavg(),
            'rounds': FLAGS.rounds, 'steps_per_round': FLAGS.steps, 'results': results}
  runs = []
  if FLAGS.append and os.path.exists(FLAGS.out):
    with open(FLAGS.out) as f:
      runs = json.load(f)['runs']
  json_out.write({'runs': runs + [report]}, FLAGS.out)


if __name__ == '__main__':
  app.run(main)
