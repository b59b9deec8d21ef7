r"""Train-step time per image of AttnGAN and DM-GAN (paper widths), as JSON.

  python bench/gan_step.py --out=bench/out/gan_step.json [--sizes=64,256] [--batch=4]

One step = every stage's D update + the G update with the DAMSM loss through a
full-size Inception-v3 image encoder (random weights: timing does not depend on
them). 64 px = the first stage alone; 256 px = all three stages. Data: the built-in
shapes, so nothing is downloaded. Runs on whatever device jax sees.
"""

import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

import t2ijax  # noqa: F401  (XLA flags before jax starts)
import jax

from t2ijax import config_base, parallel
from t2ijax.trainers import loop

import json_out  # bench/, the script's own folder
import shapes_setup  # bench/, the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "bench/out/gan_step.json", "JSON output path")
flags.DEFINE_string("sizes", "64,256", "largest image size per measurement")
flags.DEFINE_string("methods", "dmgan,attngan", "methods to time")
flags.DEFINE_integer("batch", 4, "global batch")
flags.DEFINE_integer("steps", 3, "timed steps after one warm-up step")

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def time_method(method, size, damsm_dir, data_dir, workdir):
  c = config_base.load_config_file(os.path.join(CONFIGS, f"{method}.py"), "cub")
  shapes_setup.use_shapes(c, data_dir, size)
  c.data.image_sizes = tuple(s for s in (64, 128, 256) if s <= size)
  c.model.num_stages = len(c.data.image_sizes)
  c.damsm.workdir = damsm_dir
  c.train.batch_size = FLAGS.batch
  setup = loop.Setup(c, workdir)
  state, _ = setup.init_or_restore()
  step = setup.jit_train_step()
  batches = [parallel.global_batch(b, setup.mesh)
             for b in setup.train_batches(0, FLAGS.steps + 1)]
  with jax.set_mesh(setup.mesh):
    start = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_and_first = time.perf_counter() - start
    start = time.perf_counter()
    for b in batches[1:]:
      state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    per_step = (time.perf_counter() - start) / FLAGS.steps
  params = {k: int(sum(x.size for x in jax.tree.leaves(v.params)))
            for k, v in setup.abstract_state.nets.items()}
  return {"method": method, "image_size": size, "stages": c.model.num_stages,
          "batch": FLAGS.batch, "seconds_per_step": per_step,
          "seconds_per_image": per_step / FLAGS.batch,
          "first_step_seconds_incl_compile": compile_and_first, "parameters": params}


def main(argv):
  del argv
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, "data")
    damsm_dir = os.path.join(tmp, "damsm")
    shapes_setup.pretrain_damsm(damsm_dir, data_dir)
    for method in FLAGS.methods.split(","):
      for size in (int(s) for s in FLAGS.sizes.split(",")):
        r = time_method(method, size, damsm_dir, data_dir, os.path.join(tmp, f"{method}{size}"))
        print(json.dumps(r), flush=True)
        results.append(r)
  report = {"benchmark": "gan_train_step", "device": str(jax.devices()[0].device_kind),
            "platform": jax.default_backend(), "num_devices": jax.device_count(),
            "jax": jax.__version__, "python": sys.version.split()[0],
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "results": results}
  json_out.write(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
