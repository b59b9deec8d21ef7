"""DF-GAN training: one D at the final size, hinge loss and MA-GP, no DAMSM loss.

Per iteration (reference/stackgan_dfgan_family.md §6.4, the 2022 code):
  1. sentence = frozen DAMSM(caption); z ~ N(0, I); fake = G(z, sentence), once.
  2. D (NetD + NetC, one Adam) takes one step on
       hinge_real(C(D(real), s)) + (hinge_fake(C(D(fake), s))
                                   + hinge_fake(C(roll(D(real)), s))) / 2
       + k * mean_i ||(d C(D(real_i), s_i) / d real_i, d ... / d s_i)||^p
     with k = 2, p = 6 (MA-GP on the matched real pair; the gradient is of the
     summed logits, so per example); `fake` is detached.
  3. G takes one step on -mean(C(D(fake), s)) against the *updated* D, with the
     same fake (G's forward runs once; its VJP is pulled back here).
Adam: G 1e-4, D 4e-4, betas (0, 0.9). No EMA officially (optim.ema_decay > 0
adds one, used for samples and evaluation). Evaluation and --mode=sample draw
truncated noise (truncnorm(-2, 2) * 0.88) as the official test code does.

DAMSM loading, text encoding, evaluation (DAMSM retrieval, shapes attributes)
and sample grids are the shared GAN trainer's (`t2ijax.trainers.gan`).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from t2ijax import errors
from t2ijax import precision
from t2ijax.models import dfgan
from t2ijax.trainers import gan
from t2ijax.trainers import sampling
from t2ijax.trainers import state as state_lib


def hinge_real(logits: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.relu(1.0 - logits))


def hinge_fake(logits: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.relu(1.0 + logits))


def ma_gp(score_fn: Callable, image: jax.Array, sentence: jax.Array,
          k: float = 2.0, p: float = 6.0):
  """Matching-aware gradient penalty k * mean_i ||grad_i||^p.

  grad_i is the gradient of score_fn's summed logits with respect to image i
  and sentence i, flattened and concatenated; the penalty stays
  differentiable in whatever score_fn closes over (D's parameters).

  Args:
    score_fn: (image, sentence) -> ((B,) logits, aux).
    image: (B, H, W, 3) real images.
    sentence: (B, D) their sentence embeddings.
    k, p: weight and power (2 and 6 officially).

  Returns:
    (penalty, logits, aux).
  """
  logits, pull_back, aux = jax.vjp(score_fn, image, sentence, has_aux=True)
  g_image, g_sentence = pull_back(jnp.ones_like(logits))
  # The norm ** p in float32 whatever D computes in: bf16's 8-bit mantissa
  # would blur the sum of squares and then raise its error to the power p / 2.
  g_image, g_sentence = g_image.astype(jnp.float32), g_sentence.astype(jnp.float32)
  squared = (jnp.sum(jnp.square(g_image).reshape(image.shape[0], -1), axis=1)
             + jnp.sum(jnp.square(g_sentence).reshape(sentence.shape[0], -1), axis=1))
  # (sum g^2)^(p/2) is ||g||^p without sqrt's infinite slope at 0; the official
  # code adds no epsilon either.
  return k * jnp.mean(squared ** (p / 2.0)), logits, aux


def discriminator_loss(d: dfgan.Discriminator, params, real: jax.Array,
                       fake: jax.Array, sentence: jax.Array, k: float = 2.0,
                       p: float = 6.0, compute_dtype: str = 'float32'):
  """DF-GAN's D objective; returns (loss, metrics). `fake` must be detached.

  compute_dtype: D's dtype (`t2ijax.precision`); its outputs, the losses and
  the MA-GP norm are float32 either way.
  """
  variables = {'params': params}

  def apply(*args, method=None):
    return precision.apply(d, variables, *args, method=method, compute_dtype=compute_dtype)

  def real_score(image, sent):
    features = apply(image, method=d.features)
    return apply(features, sent, method=d.logits), features

  penalty, real_logits, real_features = ma_gp(real_score, real, sentence, k, p)
  # Image i + 1 with sentence i: every sentence gets another image's features.
  mismatch = apply(jnp.roll(real_features, -1, axis=0), sentence, method=d.logits)
  fake_logits = apply(fake, sentence)
  real_loss, fake_loss = hinge_real(real_logits), hinge_fake(fake_logits)
  mismatch_loss = hinge_fake(mismatch)
  loss = real_loss + (fake_loss + mismatch_loss) / 2.0 + penalty
  return loss, {'D_loss': loss, 'D_real': real_loss, 'D_fake': fake_loss,
                'D_mismatch': mismatch_loss, 'D_magp': penalty,
                'D_real_logit': jnp.mean(real_logits),
                'D_fake_logit': jnp.mean(fake_logits)}


def generator_loss(d: dfgan.Discriminator, params, fake: jax.Array,
                   sentence: jax.Array, compute_dtype: str = 'float32') -> jax.Array:
  """-mean D(fake, sentence): G's whole objective (float32 logits)."""
  return -jnp.mean(precision.apply(d, {'params': params}, fake, sentence,
                                   compute_dtype=compute_dtype))


def sample_noise(key: jax.Array, shape, truncation: bool, trunc_rate: float) -> jax.Array:
  """N(0, I), or truncnorm(-2, 2) * trunc_rate as DF-GAN's test code draws it."""
  if truncation:
    return jax.random.truncated_normal(key, -2.0, 2.0, shape) * trunc_rate
  return jax.random.normal(key, shape)


class DfGan(gan.TextToImageGan):
  """DF-GAN on the shared GAN harness: nets 'G' and 'D0' (NetD + NetC)."""
  # bfloat16: G and D (MA-GP's backward pass included) cast at the network
  # boundary (t2ijax/precision.py); the hinge losses, MA-GP's norm ** p and the
  # frozen DAMSM stay float32.
  compute_dtypes = ('float32', 'bfloat16')

  def __init__(self, config, vocab, num_train_examples):
    sizes = tuple(config.data.image_sizes)
    if len(sizes) != 1 or config.model.num_stages != 1:
      raise errors.ConfigError(
          f'DF-GAN generates one image size, but data.image_sizes={sizes} and '
          f'model.num_stages={config.model.num_stages}: set data.image_sizes=(256,) '
          '(or another single power of two) and model.num_stages=1')
    try:
      dfgan.channel_plan(config.model.ngf, sizes[0])
    except ValueError as e:
      raise errors.ConfigError(f'data.image_sizes={sizes}: {e}') from None
    super().__init__(config, vocab, num_train_examples)

  def make_generator(self):
    m = self.config.model
    return dfgan.NetG(ngf=m.ngf, z_dim=m.z_dim, image_size=self.sizes[-1])

  def make_discriminator(self, image_size):
    return dfgan.Discriminator(ndf=self.config.model.ndf, image_size=image_size)

  @property
  def _ema_decay(self) -> float | None:
    decay = self.config.optim.ema_decay
    return decay if decay > 0 else None

  def init_state(self, rng):
    k_init, k_state = jax.random.split(rng)
    # XLA:CPU compiles each threefry draw slowly (G and D have ~260 tensors:
    # ~28 s of CPU at 32 px vs ~10 s); 'rbg' keys are one native op per draw.
    k_init = jax.random.wrap_key_data(
        jax.random.bits(k_init, (4,), jnp.uint32), impl='rbg')
    k_g, k_d = jax.random.split(k_init)
    m, size, b = self.config.model, self.sizes[-1], 2
    sentence = jnp.zeros((b, m.nef))
    g_vars = self.generator.init(k_g, jnp.zeros((b, m.z_dim)), sentence)
    d_vars = self.discriminators[0].init(k_d, jnp.zeros((b, size, size, 3)), sentence)
    nets = {
        'G': state_lib.new_net(g_vars['params'], self.txs['G'],
                               ema=self._ema_decay is not None),
        'D0': state_lib.new_net(d_vars['params'], self.txs['D0']),
        # The frozen DAMSM encoders travel in the state, as in the shared trainer.
        'text_encoder': state_lib.new_net(
            jax.tree.map(jnp.asarray, self.damsm.text_variables['params']), None),
    }
    image_vars = jax.tree.map(jnp.asarray, self.damsm.image_variables)
    nets['image_encoder'] = state_lib.new_net(
        image_vars['params'], None,
        collections={k: v for k, v in image_vars.items() if k != 'params'})
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32),
                                rng=jax.random.key_data(k_state), nets=nets)

  def generate(self, g_net, params, z, sentence, words, mask, key, train):
    """The shared trainer's generate: words, mask and key are unused here."""
    del words, mask, key, train   # No attention, no CA, nothing mode-dependent.
    if isinstance(params, tuple) and not params:
      params = g_net.params       # no EMA kept: sample with the parameters
    return {'images': [self._generate(params, z, sentence)]}, {}

  def _generate(self, params, z, sentence):
    return precision.apply(self.generator, {'params': params}, z, sentence,
                           compute_dtype=self.compute_dtype)

  def sample_noise(self, key, shape):
    s = self.config.sample
    return sample_noise(key, shape, s.truncation, s.trunc_rate)

  def train_step(self, state, batch):
    key = state.step_key()
    _, sentence, _ = self.encode_text(state, batch['caption'], batch['caption_len'])
    real = self.real_images(batch)[-1]
    z = jax.random.normal(key, (sentence.shape[0], self.config.model.z_dim))
    g, d, disc = state.nets['G'], state.nets['D0'], self.discriminators[0]
    fake, pull_back = jax.vjp(lambda params: self._generate(params, z, sentence), g.params)

    loss, dtype = self.config.loss, self.compute_dtype
    d_grads, metrics = jax.grad(discriminator_loss, argnums=1, has_aux=True)(
        disc, d.params, real, jax.lax.stop_gradient(fake), sentence,
        loss.magp_k, loss.magp_p, dtype)
    d = state_lib.apply_updates(d, d_grads, self.txs['D0'])

    g_loss, cotangent = jax.value_and_grad(generator_loss, argnums=2)(
        disc, d.params, fake, sentence, dtype)
    (g_grads,) = pull_back(cotangent)
    g = state_lib.apply_updates(g, g_grads, self.txs['G'], ema_decay=self._ema_decay)
    metrics = dict(metrics, G_loss=g_loss)
    nets = dict(state.nets, G=g, D0=d)
    return state.replace(step=state.step + 1, nets=nets), metrics

  sample_command = staticmethod(sampling.sample_command)

