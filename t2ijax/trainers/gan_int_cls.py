"""GAN-INT-CLS training (Reed et al., ICML 2016) on the shared GAN harness.

Per iteration (reference/stackgan_dfgan_family.md §3.6, `main_cls_int.lua`):
  1. t = text vector of the caption, t_w = of the mismatched caption (another
     class); fake = G(z, t) in train mode (BN batch statistics).
  2. D takes one Adam step on
       BCE(D(x, t), 1) + cls_weight BCE(D(x, t_w), 0) + (1 - cls_weight) BCE(D(fake, t), 0)
     (three forward passes, each with its own BN statistics; cls_weight 0.5).
     The official "wrong" pair is (an image of another class, t); the pipeline
     gives a caption of another class, so the pair here is (x, t_w).
  3. INT: t_int = beta t[:B/2] + (1 - beta) t[B/2:] (beta 0.5). G takes one
     Adam step on one forward of 1.5 B samples, [G(z1, t); G(z2, t_int)], against
     the updated D: sum_i w_i BCE(D(G_i, t_i), 1) / (1.5 B) with w = 1 for the
     first B and interp_weight (1.0) for the interpolated half.
  4. With model.style_encoder, S takes one Adam step on mean ||z - S(fake)||^2
     (the paper's §5.3 inversion; fake detached), so G(S(x), t') draws
     caption t' in the style (pose, background) of a real image x.
Adam 2e-4 (0.5, 0.999) for G, D (and S), x0.5 every 100 epochs. Officially no EMA
(optim.ema_decay > 0 keeps one for samples and evaluation).

Text vectors come from t2ijax/text_conditioning.py (config.text.kind: DAMSM
sentence, a trained char-CNN-RNN, or the released embedding pickles); DAMSM
loading, evaluation (DAMSM retrieval, R-precision, shapes attributes) and
sample grids are the shared GAN trainer's. Evaluation adds style transfer:
S(test image i) with the caption of test image i - 1, judged by the shapes
classifier against that caption (and, for the background, against image i).
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
from t2ijax import text_conditioning
from t2ijax.models import gan_int_cls as models
from t2ijax.trainers import gan
from t2ijax.trainers import state as state_lib


def discriminator_loss(logit_real: jax.Array, logit_wrong: jax.Array | None,
                       logit_fake: jax.Array, cls_weight: float):
  """real + cls_weight * wrong + (1 - cls_weight) * fake, BCE on logits."""
  real, fake = gan.bce(logit_real, 1.0), gan.bce(logit_fake, 0.0)
  wrong = gan.bce(logit_wrong, 0.0) if logit_wrong is not None else jnp.zeros(())
  return real + cls_weight * wrong + (1.0 - cls_weight) * fake, (real, wrong, fake)


def interpolate(text: jax.Array, beta: float) -> jax.Array:
  """GAN-INT: beta t[:B/2] + (1 - beta) t[B/2:2(B/2)], (B // 2, D)."""
  half = text.shape[0] // 2
  return beta * text[:half] + (1.0 - beta) * text[half:2 * half]


def generator_loss(logits: jax.Array, num_plain: int, interp_weight: float) -> jax.Array:
  """Weighted BCE(., 1): weight 1 on the first num_plain, interp_weight after,
  the weighted sum divided by the number of samples (Torch's size average)."""
  per = optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits))
  weights = jnp.where(jnp.arange(logits.shape[0]) < num_plain, 1.0, interp_weight)
  return jnp.sum(weights * per) / logits.shape[0]


def style_loss(z: jax.Array, z_hat: jax.Array) -> jax.Array:
  return jnp.mean(jnp.sum(jnp.square(z - z_hat), axis=-1))


class GanIntCls(gan.TextToImageGan):
  """Nets 'G', 'D0', 'S' (style encoder), the frozen DAMSM and conditioning nets."""
  # bfloat16: G, D and S cast at the network boundary (t2ijax/precision.py);
  # BCE, the style loss, BN statistics and the frozen text conditioning
  # (DAMSM, char-CNN-RNN) stay float32.
  compute_dtypes = ('float32', 'bfloat16')

  def __init__(self, config, vocab, num_train_examples):
    sizes = tuple(config.data.image_sizes)
    if sizes != (64,) or config.model.num_stages != 1:
      raise errors.ConfigError(
          f'GAN-INT-CLS generates 64x64 images, but data.image_sizes={sizes} and '
          f'model.num_stages={config.model.num_stages}: set data.image_sizes=(64,) and '
          'model.num_stages=1')
    if config.train.batch_size % 2:
      raise errors.ConfigError(
          f'train.batch_size={config.train.batch_size} must be even: GAN-INT pairs the '
          'first half of the batch with the second')
    super().__init__(config, vocab, num_train_examples)
    self.conditioner = text_conditioning.TextConditioner(config, vocab, self.damsm)
    m, o = config.model, config.optim
    self.style = models.StyleEncoder(ndf=m.ndf, z_dim=m.z_dim) if m.style_encoder else None
    steps_per_epoch = max(num_train_examples // config.train.batch_size, 1)

    def schedule(lr):
      if o.decay_every_epochs <= 0:
        return lr
      return optax.exponential_decay(lr, o.decay_every_epochs * steps_per_epoch,
                                     o.lr_decay, staircase=True)
    self.txs = {'G': optax.adam(schedule(o.g_lr), o.b1, o.b2),
                'D0': optax.adam(schedule(o.d_lr), o.b1, o.b2)}
    if self.style is not None:
      self.txs['S'] = optax.adam(schedule(o.g_lr), o.b1, o.b2)

  def make_generator(self):
    m = self.config.model
    return models.Generator(ngf=m.ngf, nt=m.nt)

  def make_discriminator(self, image_size):
    del image_size
    m = self.config.model
    return models.Discriminator(ndf=m.ndf, nt=m.nt)

  @property
  def _ema_decay(self) -> float | None:
    decay = self.config.optim.ema_decay
    return decay if decay > 0 else None

  # ---- init ----
  def init_state(self, rng):
    k_init, k_state = jax.random.split(rng)
    # One native op per draw instead of threefry (faster compiles on CPU), as DF-GAN.
    k_init = jax.random.wrap_key_data(jax.random.bits(k_init, (4,), jnp.uint32), impl='rbg')
    k_g, k_d, k_s = jax.random.split(k_init, 3)
    m, b = self.config.model, 2
    text = jnp.zeros((b, self.conditioner.dim))
    image = jnp.zeros((b, 64, 64, 3))
    g_vars = self.generator.init(k_g, jnp.zeros((b, m.z_dim)), text)
    d_vars = self.discriminators[0].init(k_d, image, text)
    split = lambda v: (v['params'], {k: x for k, x in v.items() if k != 'params'})
    nets = {
        'G': state_lib.new_net(g_vars['params'], self.txs['G'], collections=split(g_vars)[1],
                               ema=self._ema_decay is not None),
        'D0': state_lib.new_net(d_vars['params'], self.txs['D0'], collections=split(d_vars)[1]),
        'text_encoder': state_lib.new_net(
            jax.tree.map(jnp.asarray, self.damsm.text_variables['params']), None),
    }
    if self.style is not None:
      s_vars = self.style.init(k_s, image)
      nets['S'] = state_lib.new_net(s_vars['params'], self.txs['S'],
                                    collections=split(s_vars)[1])
    image_vars = jax.tree.map(jnp.asarray, self.damsm.image_variables)
    nets['image_encoder'] = state_lib.new_net(image_vars['params'], None,
                                              collections=split(image_vars)[1])
    nets.update(self.conditioner.init_nets())
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32),
                                rng=jax.random.key_data(k_state), nets=nets)

  # ---- generation ----
  def _g_params(self, g_net):
    return g_net.ema_params if self._ema_decay is not None else g_net.params

  def generate(self, g_net, params, z, sentence, words, mask, key, train):
    """The shared trainer's generate: `sentence` is the conditioning vector."""
    del words, mask, key
    if isinstance(params, tuple) and not params:
      params = g_net.params           # no EMA kept
    variables = g_net.variables(params)
    if train:
      images, collections = self._train_apply(self.generator, variables, z, sentence)
      return {'images': [images]}, collections
    return {'images': [self._inference(self.generator, variables, z, sentence)]}, {}

  def _inference(self, module, variables, *args):
    """Eval-time apply: BN with running averages, or (sample.bn_batch_stats)
    with the batch's own statistics, as Torch nets left in training mode."""
    if self.config.sample.bn_batch_stats:
      return self._train_apply(module, variables, *args)[0]
    return precision.apply(module, variables, *args, train=False,
                           compute_dtype=self.compute_dtype)

  def _condition(self, state, batch, split, key, wrong=False):
    return self.conditioner.from_batch(state, batch, split, key, wrong=wrong)

  # ---- the step ----
  def train_step(self, state, batch):
    cfg, loss_cfg = self.config, self.config.loss
    split = cfg.data.train_split
    key = state.step_key()
    k_z, k_z2, k_t, k_w = jax.random.split(key, 4)
    text = self._condition(state, batch, split, k_t)
    wrong = self._condition(state, batch, split, k_w, wrong=True) \
        if loss_cfg.cls_weight > 0 else None
    real = self.real_images(batch)[-1]
    b, z_dim = text.shape[0], cfg.model.z_dim
    z = jax.random.normal(k_z, (b, z_dim))
    g, d, disc = state.nets['G'], state.nets['D0'], self.discriminators[0]

    fake, g_cols = self._train_apply(self.generator, g.variables(), z, text)
    fake = jax.lax.stop_gradient(fake)

    def d_loss_fn(params):
      cols = d.collections
      logit_real, cols = self._train_apply(disc, {'params': params, **cols}, real, text)
      logit_wrong = None
      if wrong is not None:
        logit_wrong, cols = self._train_apply(disc, {'params': params, **cols}, real, wrong)
      logit_fake, cols = self._train_apply(disc, {'params': params, **cols}, fake, text)
      loss, parts = discriminator_loss(logit_real, logit_wrong, logit_fake, loss_cfg.cls_weight)
      return loss, (parts, cols, logit_real, logit_fake)

    (d_loss, ((real_l, wrong_l, fake_l), d_cols, logit_real, logit_fake)), d_grads = \
        jax.value_and_grad(d_loss_fn, has_aux=True)(d.params)
    d = state_lib.apply_updates(d, d_grads, self.txs['D0'], collections=d_cols)

    # G: B plain samples and B/2 interpolated ones in one forward (one BN batch).
    g_text = text
    if loss_cfg.interp_weight > 0:
      g_text = jnp.concatenate([text, interpolate(text, loss_cfg.interp_beta)], axis=0)
    z2 = jax.random.normal(k_z2, (g_text.shape[0], z_dim))

    def g_loss_fn(params):
      images, cols = self._train_apply(self.generator, {'params': params, **g_cols}, z2, g_text)
      logits, dc = self._train_apply(disc, d.variables(), images, g_text)
      return generator_loss(logits, b, loss_cfg.interp_weight), (cols, dc)

    (g_loss, (g_cols, d_cols)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g.params)
    d = d.replace(collections=d_cols)
    g = state_lib.apply_updates(g, g_grads, self.txs['G'], collections=g_cols,
                                ema_decay=self._ema_decay)
    nets = dict(state.nets, G=g, D0=d)
    metrics = {'D_loss': d_loss, 'D_real': real_l, 'D_wrong': wrong_l, 'D_fake': fake_l,
               'D_real_prob': jnp.mean(jax.nn.sigmoid(logit_real)),
               'D_fake_prob': jnp.mean(jax.nn.sigmoid(logit_fake)), 'G_loss': g_loss}

    if self.style is not None:
      s = state.nets['S']

      def s_loss_fn(params):
        z_hat, cols = self._train_apply(self.style, {'params': params, **s.collections}, fake)
        return style_loss(z, z_hat), cols

      (s_loss, s_cols), s_grads = jax.value_and_grad(s_loss_fn, has_aux=True)(s.params)
      nets['S'] = state_lib.apply_updates(s, s_grads, self.txs['S'], collections=s_cols)
      metrics['S_loss'] = s_loss
    return state.replace(step=state.step + 1, nets=nets), metrics

  # ---- evaluation and pictures ----
  def _sample(self, state, batch, key, split=None):
    split = split or self.config.data.eval_split
    k_z, k_t = jax.random.split(key)
    text = self._condition(state, batch, split, k_t)
    z = self.sample_noise(k_z, (text.shape[0], self.config.model.z_dim))
    g = state.nets['G']
    out, _ = self.generate(g, self._g_params(g), z, text, None, None, None, train=False)
    # The DAMSM sentence judges the images (R-precision), whatever G is conditioned on.
    _, sentence, _ = self.encode_text(state, batch['caption'], batch['caption_len'])
    return out['images'], sentence

  def style_transfer(self, state, style_images: jax.Array, text: jax.Array) -> jax.Array:
    """G(S(style image), text) in [-1, 1]; style images in [-1, 1]."""
    s, g = state.nets['S'], state.nets['G']
    z = self._inference(self.style, s.variables(), style_images)
    return self._inference(self.generator, g.variables(self._g_params(g)), z, text)

  def eval_step(self, state, batch):
    out = super().eval_step(state, batch)
    if self.style is None:
      return out
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2 ** 30 + 1)
    # Content: the caption of the previous example; style: this example's image.
    content = {k: jnp.roll(v, 1, axis=0) for k, v in batch.items()}
    text = self._condition(state, content, self.config.data.eval_split, key)
    images = self.style_transfer(state, self.real_images(batch)[-1], text)
    out['style_images'] = jnp.clip((images + 1.0) * 127.5, 0, 255).astype(jnp.uint8)
    if 'attributes' in batch:
      out['style_content_attributes'] = content['attributes']
      out['style_source_attributes'] = batch['attributes']
    return out

  def summarize_eval(self, outputs):
    result = super().summarize_eval(outputs)
    if 'style_content_attributes' in outputs[0] and self.config.eval.shapes_classifier:
      result.update(self._style_agreement(outputs))
    return result

  def _style_agreement(self, outputs):
    """Shapes accuracy of style-transfer images: caption attributes vs the caption
    given, background vs the style image (the caption rarely names it)."""
    from t2ijax.data import builder
    from t2ijax.data import shapes
    from t2ijax.evaluation import shapes_classifier
    images = np.concatenate([o['style_images'] for o in outputs])
    content = np.concatenate([o['style_content_attributes'] for o in outputs])
    source = np.concatenate([o['style_source_attributes'] for o in outputs])
    cache = os.path.join(self.config.data.data_dir or builder.default_data_dir(),
                         'shapes_classifier')
    predictions = shapes_classifier.load_or_train(cache, images.shape[1], seed=0).predict(images)
    result = {}
    for i, name in enumerate(shapes.ATTRIBUTE_NAMES):
      if name in shapes.REQUIRED_IN_CAPTION:
        result[f'style_{name}_accuracy'] = float(np.mean(predictions[name] == content[:, i]))
        # How often the output copies the style image's value instead (a
        # baseline: chance-level agreement means the caption wins).
        result[f'style_{name}_from_style_image'] = float(
            np.mean(predictions[name] == source[:, i]))
      else:
        result[f'style_{name}_from_style_image'] = float(
            np.mean(predictions[name] == source[:, i]))
    result['style_mean_accuracy'] = float(np.mean(
        [result[f'style_{n}_accuracy'] for n in shapes.REQUIRED_IN_CAPTION]))
    return result

  def sample_grid(self, state, batch):
    n = min(self.config.log.num_samples, batch['caption'].shape[0])
    small = jax.tree.map(lambda x: x[:n], dict(batch))
    images, _ = self._sample(state, small, jax.random.key(self.config.sample.seed),
                             split=self.config.data.train_split)
    columns = [np.asarray(jax.device_get(small['image64'])),
               images_lib.to_uint8(np.asarray(jax.device_get(images[-1])))]
    if self.style is not None:
      # Style of row i's image, caption of row i - 1.
      content = {k: jnp.roll(v, 1, axis=0) for k, v in small.items()}
      text = self._condition(state, content, self.config.data.train_split,
                             jax.random.key(self.config.sample.seed))
      transfer = self.style_transfer(state, self.real_images(small)[-1], text)
      columns.append(images_lib.to_uint8(np.asarray(jax.device_get(transfer))))
    tiles = np.stack(columns, axis=1)
    return images_lib.grid(tiles.reshape(-1, *tiles.shape[2:]), ncols=len(columns))

  @staticmethod
  def sample_command(config, workdir: str) -> dict:
    return sample_command(config, workdir)


def _read_style_images(paths: list[str], size: int) -> np.ndarray:
  from PIL import Image
  out = []
  for path in paths:
    if not os.path.exists(path):
      raise errors.ConfigError(f'sample.style_images: {path} does not exist')
    try:
      img = Image.open(path).convert('RGB')
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise errors.CorruptImageError(f'sample.style_images: {path} cannot be read ({e})') \
          from None
    w, h = img.size
    side = min(w, h)    # centre square, then the model's size
    img = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    out.append(np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), np.uint8))
  return np.stack(out)


def _test_images(setup, num: int) -> np.ndarray:
  from t2ijax.trainers import loop
  cfg = setup.config
  loader = loop.make_loader(cfg, setup.prepared, cfg.data.eval_split, shuffle=True,
                            seed_offset=1)
  return np.stack([loader(k)['image64'] for k in range(min(num, loader.size))])


def sample_command(config, workdir: str) -> dict:
  """--mode=sample: captions x noise grid, and style transfer when S exists.

  Style transfer grid: one row per style image (sample.style_images, comma-
  separated paths, else sample.num_style test-split images): the style image,
  then G(S(style image), caption) for each caption.
  """
  from t2ijax.trainers import loop
  from t2ijax.trainers import sampling
  setup, state, step = loop.restore_state(config, workdir)
  method, s = setup.method, config.sample
  if not method.conditioner.encodes_captions:
    method.conditioner.from_ids(state, None, None)      # raises the clear error
  captions = sampling.read_captions(s)
  ids, lengths = sampling.encode_captions(captions, setup.prepared.vocab,
                                          config.data.max_words, config.data.unknown_words)
  text = jax.jit(method.conditioner.from_ids)(state, jnp.asarray(ids), jnp.asarray(lengths))
  n, k = len(captions), s.num_noise
  key = jax.random.key(s.seed)
  z = method.sample_noise(key, (n * k, config.model.z_dim))
  generate = jax.jit(lambda st, zz, tt: method._inference(
      method.generator, st.nets['G'].variables(method._g_params(st.nets['G'])), zz, tt))
  images = generate(state, z, jnp.repeat(text, k, axis=0))
  stamp = time.strftime('%Y%m%d_%H%M%S')
  out_dir = os.path.join(workdir, 'samples')
  picture = images_lib.grid(images_lib.to_uint8(np.asarray(images)), ncols=k)
  result = {'grid': images_lib.save_png(
      os.path.join(out_dir, f'sample_step{step}_{stamp}.png'), picture), 'step': step}
  with open(os.path.join(out_dir, f'sample_step{step}_{stamp}.txt'), 'w') as f:
    f.write(f'rows: captions, columns: {k} noise draws\n' + '\n'.join(captions) + '\n')
  if method.style is not None:
    paths = [p.strip() for p in s.style_images.split(',') if p.strip()]
    styles = _read_style_images(paths, 64) if paths else _test_images(setup, s.num_style)
    x = jnp.asarray(styles, jnp.float32) / 127.5 - 1.0
    transfer = jax.jit(method.style_transfer)
    rows = []
    for i in range(len(styles)):
      out = transfer(state, jnp.repeat(x[i:i + 1], n, axis=0), text)
      rows.append(np.concatenate([styles[i:i + 1], images_lib.to_uint8(np.asarray(out))]))
    picture = images_lib.grid(np.concatenate(rows), ncols=n + 1)
    result['style_transfer'] = images_lib.save_png(
        os.path.join(out_dir, f'style_step{step}_{stamp}.png'), picture)
    with open(os.path.join(out_dir, f'style_step{step}_{stamp}.txt'), 'w') as f:
      f.write('rows: style images (first column); columns: G(S(style), caption) for\n'
              + '\n'.join(captions) + '\n')
  logging.info('samples written: %s', result)
  return result
