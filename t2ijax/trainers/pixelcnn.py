"""Gated Conditional PixelCNN on the training harness: likelihood training,
bits/dim evaluation, cached sampling.

Conditioning by config.model.condition:
  none         p(x)
  class        p(x | one-hot): the shapes class id (shape x colour), or with
               model.class_input='attributes' the concatenated one-hots of all
               five shapes attributes
  caption      p(x | caption): the frozen DAMSM's sentence vector as the global
               condition and, with model.spatial_features > 0, a deconvolved
               map of it (plus, with model.word_attention, the DAMSM word
               features attended per location) as the spatial condition; the
               DAMSM is pretrained first into <workdir>/damsm in the demos
  autoencoder  p(x | encoder(x)): the paper's section 2.4 auto-encoder, the
               encoder trained end to end through the decoder's likelihood

Nets in the state: 'pixelcnn' (conditioning nets + decoder) and, for captions,
'text_encoder' (frozen). Batches carry uint8 images (key image<size>), exactly
the 8-bit values the likelihood is of.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from t2ijax import errors
from t2ijax import images as images_lib
from t2ijax import precision
from t2ijax.data import shapes
from t2ijax.losses import likelihood
from t2ijax.models import pixelcnn as model_lib
from t2ijax.trainers import method as method_lib
from t2ijax.trainers import pixelcnn_sampling
from t2ijax.trainers import state as state_lib

_ATTRIBUTE_SIZES = tuple(len(v) for v in shapes.ATTRIBUTES.values())


def make_model(config) -> model_lib.PixelCnnModel:
  m = config.model
  size = _image_size(config)
  return model_lib.PixelCnnModel(
      condition=m.condition, image_size=size, num_layers=m.num_layers,
      features=m.features, kernel_size=m.kernel_size, first_kernel_size=m.first_kernel_size,
      skip_features=m.skip_features, head_features=m.head_features,
      spatial_features=m.spatial_features, word_attention=m.word_attention,
      bottleneck=m.bottleneck, encoder_width=m.encoder_width,
      zero_init_conditioning=m.get('zero_init_conditioning', True))


def _image_size(config) -> int:
  sizes = tuple(config.data.image_sizes)
  if len(sizes) != 1:
    raise errors.ConfigError(
        f'the PixelCNN models one image size, but data.image_sizes={sizes}: set '
        'data.image_sizes=(32,) (with data.load_size=0 nothing is resampled)')
  return int(sizes[0])


def _check_model_config(config) -> None:
  m = config.model
  if m.condition not in model_lib.CONDITIONS:
    raise errors.ConfigError(
        f'model.condition={m.condition!r} is not one of {model_lib.CONDITIONS}')
  for name in ('features', 'skip_features', 'head_features'):
    if m[name] <= 0 or m[name] % 3:
      raise errors.ConfigError(
          f'model.{name}={m[name]} must be a positive multiple of 3 (R, G, B groups)')
  for name in ('kernel_size', 'first_kernel_size'):
    if m[name] < 1 or m[name] % 2 == 0:
      raise errors.ConfigError(f'model.{name}={m[name]} must be odd')
  if m.condition == 'class' and m.class_input not in ('class_id', 'attributes'):
    raise errors.ConfigError(
        f"model.class_input={m.class_input!r} is not 'class_id' or 'attributes'")


def conditioning_labels(params):
  """'conditioning' for the conditioning nets and the gates' projections of them."""
  def label(path, _):
    names = [getattr(k, 'key', str(k)) for k in path]
    cond = names[0] != 'decoder' or any(
        n in ('v_global', 'h_global', 'v_spatial', 'h_spatial') for n in names)
    return 'conditioning' if cond else 'decoder'
  return jax.tree_util.tree_map_with_path(label, params)


def learning_rate_schedule(optim, num_steps: int) -> float | optax.Schedule:
  """optim.schedule: 'constant' at optim.lr, or 'cosine' from optim.lr to 0 at num_steps.

  A constant rate comes back as a float: Adam's state then has no schedule count,
  as in the checkpoints written before schedules existed, so those still restore.
  'cosine' anneals the last steps, so the final checkpoint is a settled model
  rather than one draw of a still-jittering walk (for comparing runs, issue 6);
  at the demo's 1,000 steps it also learns less (docs/models.md).
  """
  kind = optim.get('schedule', 'constant')
  if kind == 'constant':
    return float(optim.lr)
  if kind == 'cosine':
    if num_steps <= 0:
      raise errors.ConfigError(
          "optim.schedule='cosine' decays over train.num_steps, which must be > 0 "
          f'(it is {num_steps}); set train.num_steps or optim.schedule=constant')
    return optax.cosine_decay_schedule(optim.lr, num_steps)
  raise errors.ConfigError(
      f"optim.schedule={kind!r} is not 'constant' or 'cosine'")


def sample_temperature(config) -> float:
  """config.sample.temperature, checked: > 0 (1 samples the model as trained)."""
  t = float(config.sample.get('temperature', 1.0))
  if t <= 0:
    raise errors.ConfigError(
        f'sample.temperature={t} must be > 0 (1 samples the model as trained, '
        '< 1 sharper)')
  return t


class PixelCnn(method_lib.Method):
  """Likelihood training of the Gated (Conditional) PixelCNN."""
  # bfloat16: the likelihood's forward (training and eval bits/dim) casts at the
  # network boundary (t2ijax/precision.py); the last layer's input comes back
  # float32, so the 3 x 256 logits and their softmaxes are float32, and the
  # frozen DAMSM and the samplers stay float32.
  compute_dtypes = ('float32', 'bfloat16')
  compute_dtype = 'float32'   # config.precision's, set in __init__

  def __init__(self, config, vocab, num_train_examples):
    super().__init__(config, vocab, num_train_examples)
    _check_model_config(config)
    self.size = _image_size(config)
    self.model = make_model(config)
    self.compute_dtype = precision.config_dtype(config)
    # Read here, so that a bad sample.temperature fails before training, not after.
    self.temperature = sample_temperature(config)
    self.damsm = None
    if config.model.condition == 'caption':
      from t2ijax.encoders import damsm_loader
      self.damsm = damsm_loader.load(config.damsm.workdir, vocab)
    o = config.optim
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    self.learning_rate = learning_rate_schedule(o, config.train.num_steps)
    adam = optax.adam(self.learning_rate, o.b1, o.b2)
    scale = o.get('conditioning_lr_scale', 1.0)
    if scale != 1.0:
      adam = optax.chain(adam, optax.multi_transform(
          {'conditioning': optax.scale(scale), 'decoder': optax.identity()},
          conditioning_labels))
    self.tx = optax.chain(*chain, adam)

  @classmethod
  def prepare_run(cls, config, workdir: str) -> None:
    """The caption variant needs a DAMSM: use config.damsm.workdir, or pretrain one."""
    if config.model.condition != 'caption':
      return
    from t2ijax.trainers import gan
    gan.TextToImageGan.prepare_run.__func__(cls, config, workdir)

  # ---- conditioning ----
  def _vector_size(self) -> int:
    m = self.config.model
    if m.condition == 'class':
      return shapes.NUM_CLASSES if m.class_input == 'class_id' else sum(_ATTRIBUTE_SIZES)
    if m.condition == 'caption':
      return self.damsm.config.model.nef
    return 0

  def _dummy_cond(self, b: int) -> dict:
    c, t = self.config.model.condition, self.config.data.max_words
    if c == 'class':
      return {'vector': jnp.zeros((b, self._vector_size()))}
    if c == 'caption':
      nef = self._vector_size()
      return {'vector': jnp.zeros((b, nef)), 'words': jnp.zeros((b, t, nef)),
              'mask': jnp.ones((b, t), bool)}
    if c == 'autoencoder':
      return {'image': jnp.zeros((b, self.size, self.size, 3))}
    return {}

  def encode_text(self, state, ids, lengths):
    out = self.damsm.text_encoder.apply(state.nets['text_encoder'].variables(), ids, lengths,
                                        deterministic=True)
    mask = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
    return out['words'], out['sentence'], mask

  def cond_inputs(self, state, batch) -> dict:
    """The conditioning inputs of a batch (its captions, labels or images)."""
    m = self.config.model
    if m.condition == 'class':
      if m.class_input == 'class_id':
        return {'vector': jax.nn.one_hot(batch['class_id'], shapes.NUM_CLASSES)}
      if 'attributes' not in batch:
        raise errors.ConfigError(
            "model.class_input='attributes' needs a data source with attributes "
            "(data.source='shapes'); use model.class_input='class_id'")
      return {'vector': jnp.concatenate(
          [jax.nn.one_hot(batch['attributes'][:, i], n)
           for i, n in enumerate(_ATTRIBUTE_SIZES)], axis=-1)}
    if m.condition == 'caption':
      words, sentence, mask = self.encode_text(state, batch['caption'], batch['caption_len'])
      return {'vector': sentence, 'words': words, 'mask': mask}
    if m.condition == 'autoencoder':
      return {'image': self.images(batch)}
    return {}

  def images(self, batch) -> jax.Array:
    return batch[f'image{self.size}']

  # ---- state ----
  def init_state(self, rng):
    k_init, k_state = jax.random.split(rng)
    b = 2
    x = jnp.zeros((b, self.size, self.size, 3))
    variables = self.model.init(k_init, x, self._dummy_cond(b))
    nets = {'pixelcnn': state_lib.new_net(variables['params'], self.tx)}
    if self.damsm is not None:
      nets['text_encoder'] = state_lib.new_net(
          jax.tree.map(jnp.asarray, self.damsm.text_variables['params']), None)
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32),
                                rng=jax.random.key_data(k_state), nets=nets)

  # ---- likelihood ----
  def bits_per_dim(self, params, state, batch, cond: dict | None = None) -> jax.Array:
    """Per-image bits/dim of the batch, given its conditioning inputs (default: its own)."""
    x = self.images(batch)
    inputs = (x, self.cond_inputs(state, batch) if cond is None else cond)
    if self.compute_dtype != 'float32':
      # uint8 images as floats, so that they are cast too (0..255 are exact in
      # bfloat16) and the decoder's first convolution runs in bfloat16.
      inputs = jax.tree.map(
          lambda a: a.astype(jnp.float32) if a.dtype == jnp.uint8 else a, inputs)
    # The network up to its last layer; that layer and the softmaxes in float32
    # through one op with a hand-written gradient (likelihood.dense_log_prob).
    features = precision.apply(self.model, {'params': params}, *inputs, logits=False,
                               compute_dtype=self.compute_dtype)
    kernel, bias = model_lib.head_kernel(params)
    return likelihood.dense_bits_per_dim(features, kernel, bias, x)

  def train_step(self, state, batch):
    net = state.nets['pixelcnn']
    loss_fn = lambda p: jnp.mean(self.bits_per_dim(p, state, batch))
    bpd, grads = jax.value_and_grad(loss_fn)(net.params)
    nets = dict(state.nets, pixelcnn=state_lib.apply_updates(net, grads, self.tx))
    return state.replace(step=state.step + 1, nets=nets), {
        'bits_per_dim': bpd, 'grad_norm': optax.tree.norm(grads),
        'lr': self._learning_rate_at(state.step)}

  def _learning_rate_at(self, step: jax.Array) -> jax.Array:
    lr = self.learning_rate
    return lr(step) if callable(lr) else jnp.float32(lr)

  # ---- sampling ----
  def sample(self, state, cond: dict, key: jax.Array, batch_size: int,
             cached: bool = True) -> jax.Array:
    """(B, H, W, 3) uint8 samples given conditioning inputs (jittable).

    At config.sample.temperature (1: the model's distribution), for --mode=sample
    and the samples eval judges alike. Always float32, whatever
    precision.compute_dtype: the cached and naive samplers
    (t2ijax/trainers/pixelcnn_sampling.py) apply the model directly.
    """
    params = state.nets['pixelcnn'].params
    g, s = self.model.apply({'params': params}, cond, method=self.model.conditioning)
    fn = pixelcnn_sampling.cached_sample if cached else pixelcnn_sampling.naive_sample
    return fn(self.model, params, g, s, key, batch_size,
              temperature=self.temperature).astype(jnp.uint8)

  def _eval_samples(self) -> int:
    """Samples drawn per eval batch (to judge them with the shapes classifier)."""
    if self.config.model.condition not in ('class', 'caption'):
      return 0
    return min(self.config.eval.samples_per_batch, self.config.eval.batch_size)

  def _judges_mismatched_condition(self) -> bool:
    return (self.config.model.condition in ('class', 'caption')
            and self.config.eval.get('mismatched_condition', True))

  def eval_step(self, state, batch):
    params = state.nets['pixelcnn'].params
    cond = self.cond_inputs(state, batch)
    bpd = self.bits_per_dim(params, state, batch, cond)
    out = {'bits_per_dim': bpd}
    if self._judges_mismatched_condition():
      # Each image again under its neighbour's caption (label): paired per image,
      # so the difference is what the model draws from its own condition, free of
      # the seed-to-seed spread an unconditional model would add (issue 6).
      other = jax.tree.map(lambda a: jnp.roll(a, 1, axis=0), cond)
      out['bits_per_dim_mismatched'] = self.bits_per_dim(params, state, batch, other)
    k = self._eval_samples()
    if k > 0:
      small = jax.tree.map(lambda x: x[:k], dict(batch))
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2 ** 30)
      key = jax.random.fold_in(key, batch['index'][0])
      out['images'] = self.sample(state, self.cond_inputs(state, small), key, k)
      if 'attributes' in batch:
        out['attributes'] = small['attributes']
    return out

  def summarize_eval(self, outputs):
    bpd = np.concatenate([np.asarray(o['bits_per_dim']) for o in outputs])
    result = {'bits_per_dim': float(np.mean(bpd))}
    if 'bits_per_dim_mismatched' in outputs[0]:
      other = np.concatenate([np.asarray(o['bits_per_dim_mismatched']) for o in outputs])
      # In bits per image, to compare with what a condition can state (a shapes
      # caption at most log2(5*6*2*5*4) = 10.2 bits).
      gain = (other - bpd).astype(np.float64) * self.size * self.size * 3
      result['bits_per_dim_mismatched'] = float(np.mean(other))
      result['condition_gain_bits_per_image'] = float(np.mean(gain))
      result['condition_gain_bits_per_image_sem'] = float(
          np.std(gain, ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
    if 'images' in outputs[0]:
      result['num_samples'] = int(sum(len(o['images']) for o in outputs))
      result['sample_temperature'] = self.temperature
      if 'attributes' in outputs[0] and self.config.eval.shapes_classifier:
        from t2ijax.trainers import gan
        # The GAN trainer's judge: per attribute, classifier(sample) == the label's.
        result.update(gan.TextToImageGan._shapes_agreement(self, outputs))
    return result

  def sample_grid(self, state, batch):
    n = min(self.config.log.num_samples, self.images(batch).shape[0])
    small = jax.tree.map(lambda x: x[:n], dict(batch))
    fn = jax.jit(lambda st, b: self.sample(st, self.cond_inputs(st, b),
                                           jax.random.key(self.config.sample.seed), n))
    samples = np.asarray(jax.device_get(fn(state, small)))
    reals = np.asarray(jax.device_get(self.images(small)))
    tiles = np.stack([reals, samples], axis=1).reshape(-1, *samples.shape[1:])
    return images_lib.grid(tiles, ncols=2)

  @staticmethod
  def sample_command(config, workdir: str) -> dict:
    return sample_command(config, workdir)


def sample_command(config, workdir: str) -> dict:
  """--mode=sample: a PNG grid of cached samples from the latest checkpoint.

  Rows: one per caption (caption variant, config.sample.captions), class id
  (class variant, config.sample.class_ids) or test image (autoencoder: the
  image, then samples decoded from its code); unconditional: sample.num_rows rows.
  Columns: config.sample.num_noise draws.
  """
  from t2ijax import parallel
  from t2ijax.trainers import loop
  from t2ijax.trainers import sampling as gan_sampling
  setup, state, step = loop.restore_state(config, workdir)
  method, s, cond_kind = setup.method, config.sample, config.model.condition
  k = s.num_noise
  lead = None
  if cond_kind == 'caption':
    captions = gan_sampling.read_captions(s)
    ids, lengths = gan_sampling.encode_captions(
        captions, setup.prepared.vocab, config.data.max_words, config.data.unknown_words)
    rows = {'caption': ids, 'caption_len': lengths}
    labels = captions
  elif cond_kind == 'class':
    class_ids = np.asarray([int(c) for c in str(s.class_ids).split(',') if c.strip()], np.int32)
    if config.model.class_input != 'class_id':
      raise errors.ConfigError(
          "--mode=sample takes class ids; with model.class_input='attributes' sample "
          'through --mode=eval (it samples from test attributes)')
    rows = {'class_id': class_ids}
    labels = [f'class {c}' for c in class_ids]
  elif cond_kind == 'autoencoder':
    loader = loop.make_loader(config, setup.prepared, config.data.eval_split, shuffle=False)
    examples = [loader(i) for i in range(s.num_rows)]
    rows = {f'image{method.size}': np.stack([e[f'image{method.size}'] for e in examples])}
    lead = rows[f'image{method.size}']
    labels = [f'test image {i}' for i in range(s.num_rows)]
  else:
    rows, labels = {}, [f'row {i}' for i in range(s.num_rows)]
  n = len(labels)
  batch = {name: np.repeat(v, k, axis=0) for name, v in rows.items()}
  total = n * k
  # Pad the batch to a multiple of the data axis so it can be sharded over it.
  devices = setup.mesh.shape['data']
  padded = -(-total // devices) * devices
  batch = {name: np.concatenate([v, np.repeat(v[-1:], padded - total, axis=0)])
           for name, v in batch.items()}
  sharding = parallel.batch_sharding(setup.mesh)
  batch = {name: jax.device_put(v, sharding) for name, v in batch.items()}
  fn = jax.jit(lambda st, b: method.sample(st, method.cond_inputs(st, b),
                                           jax.random.key(s.seed), padded),
               out_shardings=sharding)
  start = time.time()
  with jax.set_mesh(setup.mesh):
    samples = np.asarray(jax.device_get(fn(state, batch)))[:total]
  seconds = time.time() - start
  tiles = samples.reshape(n, k, *samples.shape[1:])
  if lead is not None:
    tiles = np.concatenate([lead[:, None], tiles], axis=1)
  picture = images_lib.grid(tiles.reshape(-1, *tiles.shape[2:]), ncols=tiles.shape[1])
  stamp = time.strftime('%Y%m%d_%H%M%S')
  out_dir = os.path.join(workdir, 'samples')
  path = images_lib.save_png(os.path.join(out_dir, f'sample_step{step}_{stamp}.png'), picture)
  with open(os.path.join(out_dir, f'sample_step{step}_{stamp}.txt'), 'w') as f:
    f.write(f'rows ({n}), {k} samples each:\n' + '\n'.join(labels) + '\n')
  result = {'grid': path, 'step': step, 'num_samples': total,
            'seconds_with_compile': round(seconds, 2)}
  logging.info('samples written: %s', result)
  return result
