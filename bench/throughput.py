r"""Training throughput per method: images/s and model FLOPs utilisation, as JSON.

  python bench/throughput.py --out=bench/out/throughput.json [--methods=all]
      [--size=256] [--batch=4] [--mesh=-1,1] [--strategy=data_parallel]
      [--merge] [--scratch=DIR]

Every method of the registry with its paper config (the `cub` variant of
configs/<method>.py; see BENCHES below) at the largest size its architecture
supports up to --size: all AttnGAN-family and StackGAN++ stages (64/128/256),
DF-GAN and StackGAN Stage-II at one size, StackGAN Stage-I and GAN-INT-CLS at
64 (their architectures are 64x64) and the Gated PixelCNN at 32 (32x32 by
design; the caption-conditioned variant at the paper's 20 layers of 384). The
data is the built-in shapes set rendered at that size. What a method loads is
made here with random weights, as timing does not depend on them: a DAMSM with
a full-size Inception-v3 image encoder (one step of training), StackGAN's
Stage-I run and MirrorGAN's STREAM (ResNet-152) saved as initialised, and
GAN-INT-CLS's char-CNN-RNN embedding pickles (1024-d, random).

The train step is compiled ahead of time for the mesh; its FLOPs come from XLA's
cost analysis of the compiled program (per device, times the devices), so
"model FLOPs" here include whatever XLA recomputes. MFU = achieved FLOP/s / the
devices' peak, for device kinds with a known peak (dense bf16 and TF32/f32
tensor-core peaks below); on CPU it is left out. Runs on whatever devices jax
sees; --num_cpu_devices fakes more.

--methods=all (the default: the issue asks for every method, and a shorter
default would quietly leave rows out) or a comma-separated subset of BENCHES.
--merge replaces the rows of the timed methods in an existing --out and keeps
the others, so slow machines can time methods one process at a time;
--scratch keeps the data and the random DAMSM/Stage-I/STREAM runs between such
processes (a temporary folder otherwise).
"""

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import t2ijax  # noqa: E402,F401  (XLA flags before jax starts)
import jax  # noqa: E402

from t2ijax import config_base  # noqa: E402
from t2ijax import parallel  # noqa: E402
from t2ijax.trainers import loop  # noqa: E402

import json_out  # noqa: E402  (bench/, the script's own folder)
import shapes_setup  # noqa: E402  (bench/, the script's own folder)

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'bench/out/throughput.json', 'JSON output path')
flags.DEFINE_string('methods', 'all', 'all, or a comma-separated subset of BENCHES')
flags.DEFINE_integer('size', 256, 'largest image size (all stages up to it)')
flags.DEFINE_integer('batch', 4, 'global batch')
flags.DEFINE_integer('steps', 3, 'timed steps after one warm-up step')
flags.DEFINE_string('mesh', '-1,1', 'mesh shape over (data, model)')
flags.DEFINE_string('strategy', 'data_parallel', 'sharding.strategy')
flags.DEFINE_integer('num_cpu_devices', -1, 'CPU only: fake this many devices')
flags.DEFINE_bool('merge', False, 'keep the rows of other methods already in --out')
flags.DEFINE_string('scratch', '', 'folder for the data and the random runs methods '
                    'load, kept for later runs (a temporary folder if empty)')

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


# ---- per-method configs: one adapter each --------------------------------


class Context:
  """Shared inputs of the adapters; the runs a method loads are made on demand."""

  def __init__(self, scratch: str, size: int):
    self.scratch, self.size = scratch, size
    self.data_dir = os.path.join(scratch, 'data')
    self.damsm_dir = os.path.join(scratch, 'damsm')
    shapes_setup.pretrain_damsm(self.damsm_dir, self.data_dir, jax.devices()[:1])

  def stackgan_stage1(self) -> str:
    """A StackGAN Stage-I run (paper widths, as initialised) for Stage-II."""
    workdir = os.path.join(self.scratch, 'stackgan_stage1_run')
    c = _load(BENCHES['stackgan'].config)
    BENCHES['stackgan'].adapt(c, self)
    shapes_setup.fresh_run(c, workdir)
    return workdir

  def stream(self, size: int) -> str:
    """MirrorGAN's STREAM (configs/stream.py:cub, ResNet-152) as initialised."""
    workdir = os.path.join(self.scratch, f'stream_{size}')
    c = _load('stream.py:cub')
    shapes_setup.use_shapes(c, self.data_dir, size)
    c.data.image_sizes = (size,)
    shapes_setup.fresh_run(c, workdir)
    return workdir

  def embedding_pickles(self, data_config) -> str:
    """Random 1024-d char-CNN-RNN embeddings for the data (GAN-INT-CLS's text)."""
    out = os.path.join(self.scratch, f'embeddings_{data_config.shapes.image_size}')
    shapes_setup.write_embedding_pickles(data_config, out)
    return out


def _largest(sizes, limit: int, method: str) -> tuple[int, ...]:
  fit = tuple(s for s in sizes if s <= limit)
  if not fit:
    raise ValueError(f'{method} runs at {sizes} pixels, none of them <= --size={limit}')
  return fit


def _data(c, ctx, sizes) -> None:
  shapes_setup.use_shapes(c, ctx.data_dir, max(sizes))
  c.data.image_sizes = tuple(sizes)


def _stages(c, ctx) -> None:
  """AttnGAN family and StackGAN++: every stage of 64/128/256 up to --size."""
  sizes = _largest((64, 128, 256), ctx.size, c.method)
  _data(c, ctx, sizes)
  c.model.num_stages = len(sizes)
  c.damsm.workdir = ctx.damsm_dir


def _mirrorgan(c, ctx) -> None:
  _stages(c, ctx)
  c.stream.workdir = ctx.stream(max(c.data.image_sizes))


def _one_size(sizes):
  """One-stage GANs: the largest of `sizes` up to --size."""
  def adapt(c, ctx):
    _data(c, ctx, _largest(sizes, ctx.size, c.method)[-1:])
    c.model.num_stages = 1
    c.damsm.workdir = ctx.damsm_dir
  return adapt


def _stackgan_stage2(c, ctx) -> None:
  _one_size((128, 256))(c, ctx)
  c.model.stage1_workdir = ctx.stackgan_stage1()


def _gan_int_cls(c, ctx) -> None:
  _one_size((64,))(c, ctx)
  # The paper's text: precomputed char-CNN-RNN embeddings (text.kind 'pickle').
  c.text.pickle_dir = ctx.embedding_pickles(c.data)


def _pixelcnn(c, ctx) -> None:
  _data(c, ctx, _largest((32,), ctx.size, c.method))
  c.damsm.workdir = ctx.damsm_dir


@dataclasses.dataclass(frozen=True)
class Bench:
  config: str                                 # configs/<file>:<arg>
  adapt: Callable[[Any, Context], None]       # sizes and the runs it loads
  note: str = ''


BENCHES = {
    'dmgan': Bench('dmgan.py:cub', _stages),
    'attngan': Bench('attngan.py:cub', _stages),
    'sdgan': Bench('sdgan.py:cub', _stages),
    'mirrorgan': Bench('mirrorgan.py:cub', _mirrorgan,
                       'STREAM = ResNet-152 at 224 px (random weights)'),
    'dfgan': Bench('dfgan.py:cub', _one_size((64, 128, 256))),
    'stackganpp': Bench('stackganpp.py:cub', _stages),
    'stackgan': Bench('stackgan.py:cub', _one_size((64,)),
                      'Stage-I: 64x64 by architecture'),
    'stackgan_stage2': Bench('stackgan.py:cub_stage2', _stackgan_stage2,
                             'Stage-II: frozen Stage-I G (random) inside G'),
    'gan_int_cls': Bench('gan_int_cls.py:cub', _gan_int_cls,
                         '64x64 by architecture; text = 1024-d embedding pickles'),
    'pixelcnn': Bench('pixelcnn.py:caption,scale=paper', _pixelcnn,
                      '32x32 by design; caption-conditioned, 20 layers of 384'),
}


def _load(spec: str):
  name, _, arg = spec.partition(':')
  return config_base.load_config_file(os.path.join(CONFIGS, name), arg or None)


# ---- timing -----------------------------------------------------------------


def time_method(name, ctx, workdir):
  bench = BENCHES[name]
  c = _load(bench.config)
  bench.adapt(c, ctx)
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
      'method': name, 'config': f'configs/{bench.config}', 'note': bench.note,
      'image_size': max(c.data.image_sizes), 'stages': len(c.data.image_sizes),
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
      'load_average_at_end': os.getloadavg(),
  }


def _methods() -> list[str]:
  if FLAGS.methods == 'all':
    return list(BENCHES)
  names = [m.strip() for m in FLAGS.methods.split(',') if m.strip()]
  unknown = [m for m in names if m not in BENCHES]
  if unknown:
    raise app.UsageError(f'--methods: unknown {unknown}; known: all or {list(BENCHES)}')
  return names


def _previous_rows(names) -> list[dict]:
  """--merge: the rows of an existing --out for methods not timed now."""
  if not (FLAGS.merge and os.path.exists(FLAGS.out)):
    return []
  with open(FLAGS.out) as f:
    return [r for r in json.load(f)['results'] if r['method'] not in names]


def main(argv):
  del argv
  if FLAGS.num_cpu_devices > 0:
    jax.config.update('jax_num_cpu_devices', FLAGS.num_cpu_devices)
  names = _methods()
  results = _previous_rows(names)
  with contextlib.ExitStack() as stack:
    scratch = FLAGS.scratch or stack.enter_context(tempfile.TemporaryDirectory())
    ctx = Context(scratch, FLAGS.size)
    for name in names:
      r = time_method(name, ctx, os.path.join(scratch, name))
      print(json.dumps(r), flush=True)
      results.append(r)
  order = {m: i for i, m in enumerate(BENCHES)}
  results.sort(key=lambda r: order.get(r['method'], len(order)))
  report = {'benchmark': 'train_throughput', 'device': jax.devices()[0].device_kind,
            'platform': jax.default_backend(), 'num_devices': jax.device_count(),
            'jax': jax.__version__, 'python': sys.version.split()[0],
            'machine': platform.machine(), 'cpu_count': os.cpu_count(),
            'load_average_at_end': os.getloadavg(), 'results': results}
  json_out.write(report, FLAGS.out)


if __name__ == '__main__':
  app.run(main)
