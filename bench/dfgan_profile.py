r"""Where the DF-GAN train step spends its time on XLA:CPU, per HLO op kind, as JSON.

  python bench/dfgan_profile.py --size=64 --cores=1 --out_json=bench/dfgan_profile_cpu.json
      [--xla_flags='--xla_cpu_use_onednn=true'] [--profile_steps=3]

--cores pins the process to that many CPUs (default 1; 0: all).

Runs the step of bench/dfgan_step.py (D with MA-GP + G, batch 8, nf 32) under the
jax profiler with XLA:CPU's per-thunk trace events on, and joins each event to its
instruction in the optimised HLO (dumped to a temporary folder) to sum the time of
  * convolutions by kind: '3x3' / '2x2' / '4x4 s2' ... for forward and
    input-gradient convs (all laid out NHWC), 'kernel grad 3x3' ... for the
    kernel gradients (XLA's layout: the image's channels as the batch, the
    whole image as the window), '+3ch' where the image side has 3 channels;
  * every other op by its name without the number (fusions by their kind).
Each convolution also gets its GFLOP/s, next to a large matmul's on the same cores.
This is what docs/models.md's 64 px analysis (issue 4) rests on.
"""

import collections
import glob
import gzip
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(ROOT))


def _setup_from_argv() -> str:
  """Pins the CPUs and sets XLA_FLAGS before jax starts; returns the dump folder."""
  args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
  n = int(args.get('cores', '1'))
  if n > 0:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
  dump = tempfile.mkdtemp(prefix='dfgan_profile_')
  flags = ' '.join(filter(None, [os.environ.get('XLA_FLAGS', ''), args.get('xla_flags', ''),
                                 '--xla_cpu_enable_xprof_traceme=true',
                                 f'--xla_dump_to={dump}', '--xla_dump_hlo_pass_re=NONE']))
  os.environ['XLA_FLAGS'] = flags
  return dump


DUMP = _setup_from_argv()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

import dfgan_step  # noqa: E402  (imports t2ijax: its XLA workaround joins the flags)

FLAGS = flags.FLAGS
flags.DEFINE_integer('size', 64, 'image size')
flags.DEFINE_integer('profile_steps', 3, 'profiled steps (after two warm-up steps)')
flags.DEFINE_string('xla_flags', '', 'extra XLA flags (read before jax starts)')
flags.DEFINE_string('out_json', 'bench/out/dfgan_profile.json', 'JSON output path')


def _conv_kind(out: str, lhs: str, rhs: str, window: str) -> str:
  o = out.split(',')
  # A kernel gradient's output is the (small) kernel and its window the whole image.
  if o[1:3] in (['2', '2'], ['3', '3'], ['4', '4']) and int(rhs.split(',')[0]) > 4:
    kind = f'kernel grad {o[1]}x{o[2]}'
  else:
    kind = re.search(r'size=(\w+)', window).group(1) + (' s2' if 'stride=2' in window else '')
  if '3' in (o[-1], lhs.split(',')[-1], rhs.split(',')[-1]):
    kind += ' +3ch'
  return kind


def _conv_flops(out: str, rhs: str) -> int:
  """2 * output elements * (kernel elements / output features)."""
  o, k = [int(x) for x in out.split(',')], [int(x) for x in rhs.split(',')]
  return 2 * math.prod(o) * math.prod(k[:-1])


def _matmul_gflop_per_s(n: int = 2048, reps: int = 10) -> float:
  """A large float32 matmul's rate on the same cores: the yardstick for the convs."""
  a = jax.numpy.ones((n, n), jax.numpy.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(reps):
    r = f(a)
  r.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - start) * 1e-9


def main(argv):
  del argv
  run, compile_s, _ = dfgan_step._jax_side(FLAGS.size, 8)  # pylint: disable=protected-access
  run(2)
  trace_dir = os.path.join(DUMP, 'trace')
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  run(FLAGS.profile_steps)
  wall = (time.perf_counter() - start) / FLAGS.profile_steps
  jax.profiler.stop_trace()

  seconds = collections.Counter()
  trace = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True))
  for event in json.load(gzip.open(trace[-1]))['traceEvents']:
    if event.get('ph') == 'X':
      seconds[event['name']] += event['dur'] * 1e-6 / FLAGS.profile_steps
  hlo_file, = glob.glob(os.path.join(DUMP, '*jit_train_step*after_optimizations.txt'))
  hlo = open(hlo_file).read()
  shapes = dict(re.findall(r'%([\w.\-]+) = \w+\[([\d,]*)\]', hlo))
  conv = re.compile(r'\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]\S* convolution\('
                    r'%([\w.\-]+), %([\w.\-]+)\), (window=\{[^}]*\})')
  by_kind, convs = collections.defaultdict(lambda: [0.0, 0, 0]), []
  names = set()
  for line in hlo.splitlines():
    m = conv.match(line)
    if not m:
      continue
    name, out, lhs, rhs, window = m.groups()
    lhs, rhs = shapes[lhs], shapes[rhs]
    t, flops = seconds.get(name, 0.0), _conv_flops(out, rhs)
    kind = _conv_kind(out, lhs, rhs, window)
    by_kind[kind][0] += t
    by_kind[kind][1] += 1
    by_kind[kind][2] += flops
    names.add(name)
    convs.append({'kind': kind, 'out': out, 'lhs': lhs, 'rhs': rhs, 'ms': 1e3 * t,
                  'gflop_per_s': flops / t * 1e-9 if t else None})
  instructions = set(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = ', hlo, re.M))
  others = collections.Counter()
  for name, t in seconds.items():
    if name in instructions and name not in names:
      others[re.sub(r'[.\d]+$', '', name)] += t
  ops_total = sum(seconds[n] for n in instructions if n in seconds)
  report = {
      'benchmark': 'dfgan_step_profile', 'image_size': FLAGS.size, 'batch': 8,
      'cores': len(os.sched_getaffinity(0)),
      # The flags in effect, less the profiling ones (the dump folder is temporary).
      'xla_flags': ' '.join(f for f in os.environ['XLA_FLAGS'].split()
                            if not f.startswith(('--xla_dump', '--xla_cpu_enable_xprof'))),
      'compile_seconds': compile_s, 'step_seconds_under_profiler': wall,
      'op_seconds_per_step': ops_total,
      'matmul_2048_gflop_per_s': _matmul_gflop_per_s(),
      'convolution_seconds_per_step': sum(v[0] for v in by_kind.values()),
      'convolutions_by_kind': {k: {'seconds': v[0], 'count': v[1],
                                   'gflop_per_s': v[2] / v[0] * 1e-9 if v[0] else None}
                               for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1][0])},
      'other_ops_seconds': dict(others.most_common(15)),
      'convolutions': sorted(convs, key=lambda c: -c['ms']),
      'load_average_at_end': os.getloadavg()}
  shutil.rmtree(DUMP, ignore_errors=True)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out_json)), exist_ok=True)
  with open(FLAGS.out_json, 'w') as f:
    json.dump(report, f, indent=2)
  share = report['convolution_seconds_per_step'] / ops_total
  print(f'{ops_total:.3f} s of ops per step, {share:.0%} in convolutions (a 2048^2 matmul: '
        f"{report['matmul_2048_gflop_per_s']:.0f} GFLOP/s); wrote {FLAGS.out_json}")
  for k, v in report['convolutions_by_kind'].items():
    print(f"  {k:22s} {v['count']:4d}x {v['seconds'] * 1e3:8.1f} ms  {v['gflop_per_s'] or 0:6.1f} GFLOP/s")


if __name__ == '__main__':
  app.run(main)
