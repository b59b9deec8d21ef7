"""StackGAN (v1) training in two phases, as StackGAN-Pytorch trains it.

model.stage = 1: Stage-I G (text + z -> 64x64) against Stage-I D.
model.stage = 2: Stage-II G (the Stage-I G of a finished Stage-I run, frozen,
  -> its image refined to data.image_sizes[0]) against Stage-II D. The Stage-I
  run is model.stage1_workdir; its weights are copied in once, at the start.

Per iteration (reference/stackgan_dfgan_family.md §4.9):
  1. sentence = frozen DAMSM(caption) (the 1024-d char-CNN-RNN embedding
     officially); z ~ N(0, I); G forward once in train mode.
  2. D takes one Adam step, conditioned on stop_gradient(mu) (G's CA mean):
       Stage-I:  cond(real, 1) + (cond(fake, 0) + cond(wrong, 0)) / 2
       Stage-II: (cond(real, 1) + uncond(real, 1)) / 2
                 + (cond(fake, 0) + cond(wrong, 0) + uncond(fake, 0)) / 3
     where "wrong" pairs real image i with the condition of text i + 1, for
     i < B - 1 (the official in-batch shift).
  3. G takes one Adam step on cond(fake, 1) [+ uncond(fake, 1)] against the
     updated D (condition detached, as officially) + loss.kl_weight * KL (2.0).
Adam, betas (0.5, 0.999), lr 2e-4 for G and D, both halved every
optim.lr_decay_epochs epochs (20 in the PyTorch release, 50 / 100 in the TF
one). Stage-II's optimizer skips the Stage-I weights; the Stage-I BatchNorm
stays in train mode during Stage-II training (model.stage1_bn_train), as the
official STAGE2_G is never put in eval mode while training. No EMA officially
(optim.ema_decay > 0 keeps one for samples and evaluation).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from t2ijax import checkpoint as ckpt_lib
from t2ijax import errors
from t2ijax import precision
from t2ijax.encoders import damsm_loader
from t2ijax.models import stackgan
from t2ijax.trainers import gan
from t2ijax.trainers import sampling
from t2ijax.trainers import state as state_lib

STAGE1_SIZE = 64
FROZEN = 'STAGE1_G'


def step_decay(lr: float, steps_per_epoch: int, decay_epochs: int) -> optax.Schedule:
  """lr * 0.5 ** (epoch // decay_epochs), epoch = step // steps_per_epoch.

  The official loops halve at the start of every decay_epochs-th epoch
  (`epoch % decay == 0 and epoch > 0`); decay_epochs <= 0: constant.
  """
  if decay_epochs <= 0:
    return optax.constant_schedule(lr)
  period = max(steps_per_epoch, 1) * decay_epochs
  return lambda count: lr * 0.5 ** (count // period)


def read_stage1_run(config) -> ml_collections.ConfigDict:
  """The resolved config of model.stage1_workdir; a clear error if unfinished."""
  m = config.model
  workdir = m.stage1_workdir
  how = (f'train Stage-I first: python -m t2ijax.main --config={m.stage1_config} '
         f'--workdir={workdir or "STAGE1_DIR"}'
         + ('' if workdir else ', then pass --config.model.stage1_workdir=STAGE1_DIR'))
  if not workdir or not damsm_loader.finished(workdir):
    raise errors.CheckpointError(
        f'StackGAN Stage-II needs a finished Stage-I run, but model.stage1_workdir='
        f'{workdir!r} holds none (no config.json, or no checkpoint at its last step); '
        f'{how}')
  with open(os.path.join(workdir, 'config.json')) as f:
    stage1 = ml_collections.ConfigDict(json.load(f))
  if stage1.method != 'stackgan' or stage1.model.stage != 1:
    raise errors.ConfigError(
        f'model.stage1_workdir={workdir!r} is a {stage1.method!r} run with '
        f'model.stage={stage1.model.get("stage")}, not a StackGAN Stage-I run; {how}')
  return stage1


class StackGan(gan.TextToImageGan):
  """StackGAN Stage-I or Stage-II on the shared GAN harness: nets 'G', 'D0'."""
  # bfloat16: G (Stage-II's frozen Stage-I G too) and D cast at the network
  # boundary (t2ijax/precision.py, `_train_apply`); BCE, KL and the DAMSM
  # stay float32.
  compute_dtypes = ('float32', 'bfloat16')

  def __init__(self, config, vocab, num_train_examples):
    m, sizes = config.model, tuple(config.data.image_sizes)
    if m.stage not in (1, 2):
      raise errors.ConfigError(f'model.stage={m.stage}: StackGAN has stages 1 and 2')
    if len(sizes) != 1 or m.num_stages != 1:
      raise errors.ConfigError(
          f'StackGAN trains one stage per run, so data.image_sizes={sizes} and '
          f'model.num_stages={m.num_stages} must be one size and 1: Stage-I (64,), '
          'Stage-II (256,) (or another power of two above 64)')
    if m.stage == 1 and sizes[0] != STAGE1_SIZE:
      raise errors.ConfigError(
          f'StackGAN Stage-I generates {STAGE1_SIZE}x{STAGE1_SIZE} images; set '
          f'data.image_sizes=({STAGE1_SIZE},) (got {sizes})')
    if m.stage == 2 and (sizes[0] <= STAGE1_SIZE or sizes[0] & (sizes[0] - 1)):
      raise errors.ConfigError(
          f'StackGAN Stage-II refines 64x64 images to a power of two above 64 '
          f'(256 officially); got data.image_sizes={sizes}')
    self.stage = m.stage
    self.stage1_config = read_stage1_run(config) if m.stage == 2 else None
    super().__init__(config, vocab, num_train_examples)
    o = config.optim
    steps_per_epoch = num_train_examples // config.train.batch_size
    self.schedules = {
        'G': step_decay(o.g_lr, steps_per_epoch, o.lr_decay_epochs),
        'D0': step_decay(o.d_lr, steps_per_epoch, o.lr_decay_epochs)}
    self.txs = {'D0': optax.adam(self.schedules['D0'], o.b1, o.b2)}
    g_tx = optax.adam(self.schedules['G'], o.b1, o.b2)
    if self.stage == 2:
      # The Stage-I weights get no updates (and no Adam moments).
      g_tx = optax.multi_transform(
          {'train': g_tx, 'frozen': optax.set_to_zero()},
          lambda params: {k: jax.tree.map(lambda _: 'frozen' if k == FROZEN else 'train', v)
                          for k, v in params.items()})
    self.txs['G'] = g_tx

  @classmethod
  def prepare_run(cls, config, workdir: str) -> None:
    """Stage-II: checks the Stage-I run and shares its DAMSM and z size."""
    if config.model.stage == 2:
      stage1 = read_stage1_run(config)
      if not config.damsm.workdir:
        # The text features must be the ones Stage-I was trained on.
        config.damsm.workdir = stage1.damsm.workdir
      config.model.z_dim = stage1.model.z_dim
    super().prepare_run(config, workdir)

  def make_generator(self):
    m = self.config.model
    if self.stage == 1:
      return stackgan.Stage1Generator(gf_dim=m.ngf, condition_dim=m.ncf, z_dim=m.z_dim)
    s1 = self.stage1_config.model
    return stackgan.Stage2Generator(
        gf_dim=m.ngf, condition_dim=m.ncf, r_num=m.r_num, image_size=self.sizes[-1],
        stage1_gf_dim=s1.ngf, stage1_condition_dim=s1.ncf, z_dim=s1.z_dim)

  def make_discriminator(self, image_size):
    m = self.config.model
    return stackgan.Discriminator(df_dim=m.ndf, condition_dim=m.ncf,
                                  image_size=image_size, use_uncond=self.stage == 2)

  # ---- init and Stage-I weights ----
  def init_state(self, rng):
    k_init, k_state = jax.random.split(rng)
    # XLA:CPU compiles threefry draws slowly; 'rbg' keys are one op per draw.
    k_init = jax.random.wrap_key_data(
        jax.random.bits(k_init, (4,), jnp.uint32), impl='rbg')
    k_g, k_ca, k_d = jax.random.split(k_init, 3)
    m, b, size = self.config.model, 2, self.sizes[-1]
    g_vars = self.generator.init(k_g, jnp.zeros((b, m.z_dim)), jnp.zeros((b, m.nef)),
                                 ca_key=k_ca, train=False)
    d_vars = self.discriminators[0].init(k_d, jnp.zeros((b, size, size, 3)),
                                         jnp.zeros((b, m.ncf)), train=False)
    nets = {
        'G': state_lib.new_net(g_vars['params'], self.txs['G'],
                               collections=gan.collections_of(g_vars),
                               ema=self.config.optim.ema_decay > 0),
        'D0': state_lib.new_net(d_vars['params'], self.txs['D0'],
                                collections=gan.collections_of(d_vars)),
        # The frozen DAMSM travels in the state, as in the shared trainer.
        'text_encoder': state_lib.new_net(
            jax.tree.map(jnp.asarray, self.damsm.text_variables['params']), None)}
    image_vars = jax.tree.map(jnp.asarray, self.damsm.image_variables)
    nets['image_encoder'] = state_lib.new_net(image_vars['params'], None,
                                              collections=gan.collections_of(image_vars))
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32),
                                rng=jax.random.key_data(k_state), nets=nets)

  def load_pretrained(self, state):
    """Stage-II: the Stage-I run's G (EMA if it kept one) and BN statistics."""
    if self.stage != 2:
      return state
    params, stats = load_stage1_generator(self.config.model.stage1_workdir,
                                          self.stage1_config, self.vocab)
    g = state.nets['G']

    def put(tree, new):
      tree = dict(tree)
      tree[FROZEN] = jax.tree.map(lambda old, x: jax.device_put(x, old.sharding),
                                  tree[FROZEN], new)
      return tree

    collections = dict(g.collections)
    collections['batch_stats'] = put(collections['batch_stats'], stats)
    g = g.replace(params=put(g.params, params), collections=collections,
                  ema_params=put(g.ema_params, params) if g.ema_params != () else ())
    logging.info('Stage-I G loaded from %s', self.config.model.stage1_workdir)
    return state.replace(nets=dict(state.nets, G=g))

  # ---- generation ----
  def generate(self, g_net, params, z, sentence, words, mask, key, train):
    """The shared trainer's generate; words and mask are unused (no attention)."""
    del words, mask
    if isinstance(params, tuple) and not params:
      params = g_net.params          # no EMA kept: sample with the parameters
    variables = g_net.variables(params)
    kwargs = {}
    if self.stage == 2:
      kwargs['stage1_train'] = train and self.config.model.stage1_bn_train
    if train:
      return self._train_apply(self.generator, variables, z, sentence, ca_key=key, **kwargs)
    return precision.apply(self.generator, variables, z, sentence, ca_key=key, train=False,
                           compute_dtype=self.compute_dtype, **kwargs), {}

  # ---- losses ----
  def discriminator_loss(self, params, collections, real, fake, condition):
    """The official D objective; `fake` and `condition` must be detached.

    Returns (loss, (metrics, collections)).
    """
    d = self.discriminators[0]
    out_real, collections = self._train_apply(d, {'params': params, **collections},
                                              real, condition)
    out_fake, collections = self._train_apply(d, {'params': params, **collections},
                                              fake, condition)
    # Image i with the condition of text i + 1 (B - 1 pairs, as officially).
    wrong, collections = self._train_apply(d, {'params': params, **collections},
                                           out_real['code'][:-1], condition[1:],
                                           method=d.cond_head)
    real_loss, fake_loss = gan.bce(out_real['cond'], 1), gan.bce(out_fake['cond'], 0)
    wrong_loss = gan.bce(wrong, 0)
    if self.stage == 1:
      loss = real_loss + (fake_loss + wrong_loss) / 2
    else:
      loss = ((real_loss + gan.bce(out_real['uncond'], 1)) / 2
              + (fake_loss + wrong_loss + gan.bce(out_fake['uncond'], 0)) / 3)
    return loss, ({'D_loss': loss, 'D_real': real_loss, 'D_fake': fake_loss,
                   'D_wrong': wrong_loss}, collections)

  def generator_adversarial(self, params, collections, fake, condition):
    d = self.discriminators[0]
    out, collections = self._train_apply(d, {'params': params, **collections}, fake,
                                         condition)
    loss = gan.bce(out['cond'], 1)
    if 'uncond' in out:
      loss = loss + gan.bce(out['uncond'], 1)
    return loss, collections

  # ---- the step ----
  def train_step(self, state, batch):
    key = state.step_key()
    k_z, k_ca = jax.random.split(key)
    _, sentence, _ = self.encode_text(state, batch['caption'], batch['caption_len'])
    z = jax.random.normal(k_z, (sentence.shape[0], self.config.model.z_dim))
    g, d = state.nets['G'], state.nets['D0']

    def generator(params):
      out, collections = self.generate(g, params, z, sentence, None, None, k_ca,
                                       train=True)
      return {'image': out['images'][-1], 'mu': out['mu'],
              'logvar': out['logvar']}, collections

    gen_out, pull_back, g_collections = jax.vjp(generator, g.params, has_aux=True)
    # The D conditions on the CA mean, detached in the D and in the G step.
    condition = jax.lax.stop_gradient(gen_out['mu'])
    real = self.real_images(batch)[-1]
    grads, (metrics, d_collections) = jax.grad(
        self.discriminator_loss, has_aux=True)(
            d.params, d.collections, real, jax.lax.stop_gradient(gen_out['image']),
            condition)
    d = state_lib.apply_updates(d, grads, self.txs['D0'], collections=d_collections)

    kl_weight = self.config.loss.kl_weight

    def generator_loss(gen_out):
      adv, collections = self.generator_adversarial(d.params, d.collections,
                                                    gen_out['image'], condition)
      kl = kl_weight * gan.kl_loss(gen_out['mu'], gen_out['logvar'])
      return adv + kl, ({'G_adv': adv, 'kl': kl}, collections)

    (g_loss, (g_parts, d_collections)), cotangent = jax.value_and_grad(
        generator_loss, has_aux=True)(gen_out)
    (g_grads,) = pull_back(cotangent)
    d = d.replace(collections=d_collections)
    ema = self.config.optim.ema_decay
    g = state_lib.apply_updates(g, g_grads, self.txs['G'], collections=g_collections,
                                ema_decay=ema if ema > 0 else None)
    metrics.update(g_parts, G_loss=g_loss, lr=self.schedules['G'](state.step))
    return state.replace(step=state.step + 1, nets=dict(state.nets, G=g, D0=d)), metrics

  sample_command = staticmethod(sampling.sample_command)


def load_stage1_generator(workdir: str, stage1_config, vocab):
  """(params, batch_stats) of the Stage-I G saved in workdir, on the host."""
  method = StackGan(stage1_config, vocab, stage1_config.train.batch_size)
  state, _ = ckpt_lib.restore_on_one_device(workdir, method.init_state)
  g = jax.device_get(state.nets['G'])
  params = g.ema_params if g.ema_params != () else g.params
  return params, g.collections['batch_stats']
