"""StackGAN++ training: the tree generator against one JCU D per branch.

Per iteration (reference/stackgan_dfgan_family.md §5.5, the official
condGANTrainer / GANTrainer):
  1. sentence = frozen DAMSM(caption) (conditional only); z ~ N(0, I);
     G forward once in train mode -> an image per branch, CA mu / logvar.
  2. each D_k takes one Adam step (separate optimizers), conditioned on
     stop_gradient(mu):
       conditional, lambda_u = loss.uncond_weight > 0:
         cond(real, 1) + cond(wrong, 0) + cond(fake, 0)
         + lambda_u * [uncond(real, 1) + uncond(wrong, 1) + uncond(fake, 0)]
       conditional, lambda_u = 0:  cond(real, 1) + (cond(wrong, 0) + cond(fake, 0)) / 2
       unconditional:              D(real, 1) + D(fake, 0)
     "wrong" pairs the real image i + 1 with text i: the official code draws
     another data-set image for text i. The D's BatchNorm sees the same batch
     (a permutation of the real one) either way, so the image code is the
     real one rolled and uncond(wrong, 1) equals uncond(real, 1); jointConv
     runs on the wrong pairs in a pass of their own, as officially.
  3. G takes one Adam step on sum_k [cond(fake_k, 1) + lambda_u uncond(fake_k, 1)]
     against the *updated* Ds, conditioned on mu *with* its gradient (the
     official G step does not detach it), + color consistency (weight
     loss.color_weight; 50 in the unconditional configs, 0 for birds)
     + loss.kl_weight * KL(mu, logvar) (2.0).
  4. EMA of G (0.999) after every G step. Officially every snapshot (2000
     iterations) also loads the EMA into the live G, so training continues
     from the average: optim.ema_to_params_every reproduces that (-1: off).
Adam 2e-4 for G and every D, betas (0.5, 0.999), no lr decay.

DAMSM loading, text encoding, evaluation (DAMSM retrieval, shapes attributes)
and sample grids are the shared GAN trainer's (`t2ijax.trainers.gan`).
"""

import jax
import jax.numpy as jnp

from t2ijax import errors
from t2ijax import precision
from t2ijax.losses import regularizers
from t2ijax.models import stackganpp
from t2ijax.trainers import gan
from t2ijax.trainers import sampling
from t2ijax.trainers import state as state_lib


def ema_to_params(params, ema_params, step: jax.Array, every: int):
  """The official snapshot quirk: params := EMA when step % every == 0."""
  if every <= 0:
    return params
  copy = (step % every) == 0
  return jax.tree.map(lambda e, p: jnp.where(copy, e, p), ema_params, params)


class StackGanPP(gan.TextToImageGan):
  """StackGAN++ on the shared GAN harness: nets 'G' and 'D0'.. 'D{n-1}'."""
  # bfloat16: G and the Ds cast at the network boundary (t2ijax/precision.py,
  # `_train_apply`); BCE, colour consistency, KL and the DAMSM stay float32.
  compute_dtypes = ('float32', 'bfloat16')

  def __init__(self, config, vocab, num_train_examples):
    sizes = tuple(sorted(config.data.image_sizes))
    expected = stackganpp.DISCRIMINATOR_SIZES[:len(sizes)]
    if sizes != expected:
      raise errors.ConfigError(
          f'StackGAN++ branches generate {stackganpp.DISCRIMINATOR_SIZES} in turn, '
          f'but data.image_sizes={sizes}: set data.image_sizes={expected} '
          '(and model.num_stages to its length)')
    super().__init__(config, vocab, num_train_examples)
    self.conditional = bool(config.model.conditional)

  def make_generator(self):
    m = self.config.model
    return stackganpp.Generator(
        gf_dim=m.ngf, ef_dim=m.ncf, z_dim=m.z_dim, r_num=m.r_num,
        num_branches=m.num_stages, conditional=m.conditional)

  def make_discriminator(self, image_size):
    m = self.config.model
    return stackganpp.Discriminator(df_dim=m.ndf, ef_dim=m.ncf,
                                    image_size=image_size,
                                    conditional=m.conditional)

  # ---- init ----
  def init_state(self, rng):
    k_init, k_state = jax.random.split(rng)
    # XLA:CPU compiles threefry draws slowly; 'rbg' keys are one op per draw.
    k_init = jax.random.wrap_key_data(
        jax.random.bits(k_init, (4,), jnp.uint32), impl='rbg')
    keys = jax.random.split(k_init, 2 + len(self.sizes))
    m, b = self.config.model, 2
    embedding = jnp.zeros((b, m.nef)) if self.conditional else None
    g_vars = self.generator.init(keys[0], jnp.zeros((b, m.z_dim)), embedding,
                                 ca_key=keys[1], train=False)
    nets = {'G': state_lib.new_net(g_vars['params'], self.txs['G'],
                                   collections=gan.collections_of(g_vars),
                                   ema=self.config.optim.ema_decay > 0)}
    condition = jnp.zeros((b, m.ncf))
    for i, (size, d) in enumerate(zip(self.sizes, self.discriminators)):
      d_vars = d.init(keys[2 + i], jnp.zeros((b, size, size, 3)), condition,
                      train=False)
      nets[f'D{i}'] = state_lib.new_net(d_vars['params'], self.txs[f'D{i}'],
                                        collections=gan.collections_of(d_vars))
    # The frozen DAMSM travels in the state, as in the shared trainer.
    nets['text_encoder'] = state_lib.new_net(
        jax.tree.map(jnp.asarray, self.damsm.text_variables['params']), None)
    image_vars = jax.tree.map(jnp.asarray, self.damsm.image_variables)
    nets['image_encoder'] = state_lib.new_net(
        image_vars['params'], None, collections=gan.collections_of(image_vars))
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32),
                                rng=jax.random.key_data(k_state), nets=nets)

  # ---- generation ----
  def generate(self, g_net, params, z, sentence, words, mask, key, train):
    """The shared trainer's generate; words and mask are unused (no attention)."""
    del words, mask
    if isinstance(params, tuple) and not params:
      params = g_net.params          # no EMA kept: sample with the parameters
    variables = g_net.variables(params)
    embedding = sentence if self.conditional else None
    if train:
      return self._train_apply(self.generator, variables, z, embedding, ca_key=key)
    return precision.apply(self.generator, variables, z, embedding, ca_key=key,
                           train=False, compute_dtype=self.compute_dtype), {}

  # ---- losses ----
  def discriminator_loss(self, index, params, collections, real, fake,
                         condition):
    """One D's official objective; `fake` and `condition` must be detached.

    Returns (loss, (metrics, collections)).
    """
    d = self.discriminators[index]
    lam = self.config.loss.uncond_weight
    out_real, collections = self._train_apply(
        d, {'params': params, **collections}, real, condition)
    out_fake, collections = self._train_apply(
        d, {'params': params, **collections}, fake, condition)
    metrics = {}
    if not self.conditional:
      real_loss, fake_loss = gan.bce(out_real['uncond'], 1), gan.bce(out_fake['uncond'], 0)
      loss = real_loss + fake_loss
    else:
      # Text i with real image i + 1 (see the module docstring).
      wrong_code = jnp.roll(out_real['code'], -1, axis=0)
      wrong, collections = self._train_apply(d, {'params': params, **collections},
                                             wrong_code, condition, method=d.cond_head)
      real_loss = gan.bce(out_real['cond'], 1)
      wrong_loss, fake_loss = gan.bce(wrong, 0), gan.bce(out_fake['cond'], 0)
      if lam > 0:
        uncond_real = gan.bce(out_real['uncond'], 1)
        # uncond(wrong) is uncond(real) rolled: the same mean BCE against 1.
        loss = (real_loss + wrong_loss + fake_loss
                + lam * (2.0 * uncond_real + gan.bce(out_fake['uncond'], 0)))
      else:
        loss = real_loss + 0.5 * (wrong_loss + fake_loss)
      metrics[f'D{index}_wrong'] = wrong_loss
    metrics.update({f'D{index}_loss': loss, f'D{index}_real': real_loss,
                    f'D{index}_fake': fake_loss})
    return loss, (metrics, collections)

  def generator_adversarial(self, index, params, collections, fake, condition):
    """G's adversarial term against D_index; returns (loss, collections)."""
    d = self.discriminators[index]
    out, collections = self._train_apply(d, {'params': params, **collections}, fake,
                                         condition)
    if not self.conditional:
      return gan.bce(out['uncond'], 1), collections
    loss = gan.bce(out['cond'], 1)
    lam = self.config.loss.uncond_weight
    if lam > 0:
      loss = loss + lam * gan.bce(out['uncond'], 1)
    return loss, collections

  # ---- the step ----
  def train_step(self, state, batch):
    key = state.step_key()
    k_z, k_ca = jax.random.split(key)
    sentence = None
    if self.conditional:
      _, sentence, _ = self.encode_text(state, batch['caption'], batch['caption_len'])
    batch_size = batch['caption'].shape[0]
    z = jax.random.normal(k_z, (batch_size, self.config.model.z_dim))
    g = state.nets['G']

    def generator(params):
      out, collections = self.generate(g, params, z, sentence, None, None, k_ca,
                                       train=True)
      keep = ('images', 'mu', 'logvar') if self.conditional else ('images',)
      return {k: out[k] for k in keep}, collections

    gen_out, pull_back, g_collections = jax.vjp(generator, g.params, has_aux=True)
    fakes = gen_out['images']
    condition = (jax.lax.stop_gradient(gen_out['mu']) if self.conditional
                 else None)
    reals = self.real_images(batch)
    nets, metrics = dict(state.nets), {}
    for i in range(len(self.sizes)):
      name = f'D{i}'
      d = nets[name]
      grads, (d_metrics, d_collections) = jax.grad(
          self.discriminator_loss, argnums=1, has_aux=True)(
              i, d.params, d.collections, reals[i], jax.lax.stop_gradient(fakes[i]),
              condition)
      nets[name] = state_lib.apply_updates(d, grads, self.txs[name],
                                           collections=d_collections)
      metrics.update(d_metrics)

    loss_cfg = self.config.loss

    def generator_loss(gen_out):
      images, total, parts, collections = gen_out['images'], 0.0, {}, {}
      # Officially G's step conditions the Ds on mu itself (not detached).
      mu = gen_out.get('mu')
      for i in range(len(self.sizes)):
        d = nets[f'D{i}']
        adv, collections[f'D{i}'] = self.generator_adversarial(
            i, d.params, d.collections, images[i], mu)
        parts[f'G{i}_adv'] = adv
        total = total + adv
      if loss_cfg.color_weight > 0 and len(images) > 1:
        parts.update(regularizers.color_consistency(images, loss_cfg.color_weight))
      if self.conditional:
        parts['kl'] = loss_cfg.kl_weight * gan.kl_loss(mu, gen_out['logvar'])
      total = total + sum(v for k, v in parts.items() if not k.endswith('_adv'))
      return total, (parts, collections)

    (g_loss, (g_parts, d_collections)), cotangent = jax.value_and_grad(
        generator_loss, has_aux=True)(gen_out)
    (g_grads,) = pull_back(cotangent)
    for i in range(len(self.sizes)):
      nets[f'D{i}'] = nets[f'D{i}'].replace(collections=d_collections[f'D{i}'])
    o = self.config.optim
    ema = o.ema_decay if o.ema_decay > 0 else None
    g = state_lib.apply_updates(g, g_grads, self.txs['G'], collections=g_collections,
                                ema_decay=ema)
    if ema is not None:
      g = g.replace(params=ema_to_params(g.params, g.ema_params, state.step + 1,
                                         o.ema_to_params_every))
    nets['G'] = g
    metrics.update(g_parts, G_loss=g_loss)
    return state.replace(step=state.step + 1, nets=nets), metrics

  sample_command = staticmethod(sampling.sample_command)
