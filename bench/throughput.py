r"""Training throughput per method: images/s and model FLOPs utilisation, as JSON.

  python bench/throughput.py --out=bench/out/throughput.json [--methods=dmgan,attngan]
      [--size=256] [--batch=4] [--mesh=-1,1] [--strategy=data_parallel]

Paper widths (the configs' `cub` variants), all stages up to --size, the built-in
shapes data at that size, a DAMSM with a full-size Inception-v3 image encoder
(random weights: timing does not depend on them). The train step is compiled
ahead of time for the mesh; its FLOPs come from XLA's cost analysis of the
compiled program (per device, times the devices), so "model FLOPs" here include
whatever XLA recomputes. MFU = achieved FLOP/s / the devices' peak, for device
kinds with a known peak (dense bf16 and TF32/f32 tensor-core peaks below); on CPU
it is left out. Runs on whatever devices jax sees; --num_cpu_devices fakes more.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import t2ijax  # noqa: E402,F401  (XLA flags before jax starts)
import jax  # noqa: E402

from t2ijax import config_base  # noqa: E402
from t2ijax import parallel  # noqa: E402
from t2ijax.trainers import loop  # noqa: E402

import shapes_setup  # noqa: E402  (bench/, the script's own folder)

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'bench/out/throughput.json', 'JSON output path')
flags.DEFINE_string('methods', 'dmgan,attngan', 'methods to time')
flags.DEFINE_integer('size', 256, 'largest image size (all stages up to it)')
flags.DEFINE_integer('batch', 4, 'global batch')
flags.DEFINE_integer('steps', 3, 'timed steps after one warm-up step')
flags.DEFINE_string('mesh', '-1,1', 'mesh shape over (data, model)')
flags.DEFINE_string('strategy', 'data_parallel', 'sharding.strategy')
flags.DEFINE_integer('num_cpu_devices', -1, 'CPU only: fake this many devices')

CONFIGS = os.path.join(ROOT, 'configs')
# Dense peak FLOP/s per device: (float32 as XLA runs it by default, bfloat16).
# On NVIDIA GPUs since Ampere, XLA runs float32 matmuls and convolutions on
# tensor cores in TF32 by default, so the TF32 peak is the float32 reference.
PEAK_FLOPS = {
    'NVIDIA H100 80GB HBM3': (494.7e12, 989.4e12),
    'NVIDIA H100': (494.7e12, 989.4e12),
    'NVIDIA H200': (494.7e12, 989.4e12),
    'NVIDIA A100-SXM4-80GB': (156e12, 312e12),
    'NVIDIA A100-SXM4-40GB': (156e12, 312e12),
    'TPU v4': (275e12, 275e12),
    'TPU v5 lite': (197e12, 197e12),
    'TPU v5p': (459e12, 459e12),
}


def _peak(device_kind: str) -> float | None:
  for name, (f32, _) in PEAK_FLOPS.items():
    if device_kind.startswith(name):
      return f32
  return None


def time_method(method, damsm_dir, data_dir, workdir):
  c = config_base.load_config_file(os.path.join(CONFIGS, f'{method}.py'), 'cub')
  shapes_setup.use_shapes(c, data_dir, FLAGS.size)
  c.data.image_sizes = tuple(s for s in (64, 128, 256) if s <= FLAGS.size)
  c.model.num_stages = len(c.data.image_sizes)
  c.damsm.workdir = damsm_dir
  c.train.batch_size = FLAGS.batch
  c.mesh.shape = tuple(int(s) for s in FLAGS.mesh.split(','))
  c.sharding.strategy = FLAGS.strategy
  setup = loop.Setup(c, workdir)
  state, _ = setup.init_or_restore()
  batches = [parallel.global_batch(b, setup.mesh)
             for b in setup.train_batches(0, FLAGS.steps + 1)]
  with jax.set_mesh(setup.mesh):
    start = time.perf_counter()
    step = setup.jit_train_step().lower(state, batches[0]).compile()
    compile_seconds = time.perf_counter() - start
    stats = loop.compiled_stats(step)
    state, metrics = step(state, batches[0])          # warm-up
    jax.block_until_ready(metrics)
    times = []
    for b in batches[1:]:
      start = time.perf_counter()
      state, metrics = step(state, b)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  n = setup.mesh.size
  flops = stats['flops_per_device'] * n
  kind = setup.mesh.devices.flat[0].device_kind
  peak = _peak(kind)
  achieved = flops / seconds
  return {
      'method': method, 'image_size': FLAGS.size, 'stages': c.model.num_stages,
      'global_batch': FLAGS.batch, 'mesh': {k: int(v) for k, v in setup.mesh.shape.items()},
      'sharding_strategy': FLAGS.strategy,
      'seconds_per_step_median': seconds, 'step_seconds': times,
      'images_per_second': FLAGS.batch / seconds,
      'compile_seconds': compile_seconds,
      'flops_per_step': flops, 'achieved_flops_per_second': achieved,
      'peak_flops_per_second': peak * n if peak else None,
      'mfu': achieved / (peak * n) if peak else None,
      'memory_per_device': stats.get('memory_per_device'),
      'state_bytes_per_device': setup.sharding_plan.bytes_per_device,
  }


def main(argv):
  del argv
  if FLAGS.num_cpu_devices > 0:
    jax.config.update('jax_num_cpu_devices', FLAGS.num_cpu_devices)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, 'data')
    damsm_dir = os.path.join(tmp, 'damsm')
    shapes_setup.pretrain_damsm(damsm_dir, data_dir, jax.devices()[:1])
    for method in FLAGS.methods.split(','):
      r = time_method(method, damsm_dir, data_dir, os.path.join(tmp, method))
      print(json.dumps(r), flush=True)
      results.append(r)
  report = {'benchmark': 'train_throughput', 'device': jax.devices()[0].device_kind,
            'platform': jax.default_backend(), 'num_devices': jax.device_count(),
            'jax': jax.__version__, 'python': sys.version.split()[0],
            'machine': platform.machine(), 'cpu_count': os.cpu_count(),
            'load_average_at_end': os.getloadavg(), 'results': results}
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
