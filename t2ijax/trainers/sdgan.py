"""SD-GAN training: AttnGAN's step with Siamese pairs and a contrastive loss.

Per iteration (our reading of the paper; reference/attngan_family.md §6):
  1. frozen DAMSM -> words, sentence (and the mismatched caption's sentence).
  2. G (with SCBN, `t2ijax.models.sdgan`) runs once on the batch. The Siamese
     pairs are formed inside that batch: row i is paired with a partner row
     p(i) != i (`siamese_pairs`), positive when both have the same class id,
     negative otherwise. One forward over the batch is both Siamese branches
     at once (same weights, two captions, two noises per pair).
  3. each stage's D takes one Adam step on AttnGAN's objective plus
     contrastive_weight_d * contrastive(real_i, real_p(i)) on its Siamese
     embeddings of the real images (so its head learns a semantic metric);
  4. G takes one Adam step on AttnGAN's objective (adversarial terms against
     the updated Ds, DAMSM, KL) plus, per stage,
     contrastive_weight_g * contrastive(fake_i, fake_p(i)) on the updated D's
     Siamese embeddings of the generated images.
  5. EMA of G, evaluation and sample grids: the shared trainer's.

Contrastive loss (Hadsell et al. 2006 with SD-GAN's positive floor), over the
N pairs of a batch, d = ||v1 - v2||_2:
  L = 1/(2N) sum [y max(d, floor)^2 + (1 - y) max(margin - d, 0)^2]
with margin 1.0 and floor 0.1.
"""

import jax
import jax.numpy as jnp

from t2ijax.models import sdgan
from t2ijax.trainers import gan
from t2ijax.trainers import sampling
from t2ijax.trainers import state as state_lib


def contrastive_loss(a: jax.Array, b: jax.Array, positive: jax.Array,
                     margin: float = 1.0, floor: float = 0.1) -> jax.Array:
  """SD-GAN's contrastive loss of N pairs of embeddings.

  Args:
    a, b: (N, D) the two branches' embeddings of each pair.
    positive: (N,) bool, True for a positive (same-semantics) pair.
    margin: negatives are pushed to at least this distance.
    floor: positives are pulled only down to this distance.

  Returns:
    1/(2N) sum [y max(d, floor)^2 + (1 - y) max(margin - d, 0)^2].
  """
  squared = jnp.sum(jnp.square(a - b), axis=-1)
  # sqrt's slope is infinite at 0; a clamp far below the floor keeps it finite.
  d = jnp.sqrt(jnp.maximum(squared, 1e-12))
  pos = jnp.square(jnp.maximum(d, floor))
  neg = jnp.square(jax.nn.relu(margin - d))
  return 0.5 * jnp.mean(jnp.where(positive, pos, neg))


def siamese_pairs(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A partner row for every row of a batch, same class first.

  Row i's partner is the first row after it (cyclically) with the same label;
  without one, simply the next row, i + 1 (a negative unless the labels agree).

  Args:
    labels: (B,) int class ids.

  Returns:
    partner: (B,) int row indices, never i itself (for B > 1).
    positive: (B,) bool, labels[i] == labels[partner[i]].
  """
  batch = labels.shape[0]
  rows = jnp.arange(batch)
  offset = (rows[None, :] - rows[:, None]) % batch      # j - i, 1 .. B-1
  same = labels[:, None] == labels[None, :]
  # Same-class rows rank first by offset, then the others; never oneself.
  score = jnp.where(same, offset, batch + offset)
  score = jnp.where(offset == 0, 3 * batch, score)
  partner = jnp.argmin(score, axis=1)
  return partner, labels[partner] == labels


class SdGan(gan.TextToImageGan):
  """SD-GAN on the shared GAN harness: nets 'G', 'D0'.. (with Siamese heads)."""

  def make_generator(self):
    m = self.config.model
    return sdgan.Generator(
        ngf=m.ngf, r_num=m.r_num, z_dim=m.z_dim, ncf=m.ncf, nef=m.nef,
        num_stages=m.num_stages, official_mask_bug=m.official_mask_bug,
        refine_level=m.refine_level)

  def make_discriminator(self, image_size):
    m = self.config.model
    return sdgan.Discriminator(ndf=m.ndf, image_size=image_size, nef=m.nef,
                               siamese_dim=m.siamese_dim)

  def _contrastive(self, embeddings, partner, positive):
    loss = self.config.loss
    return contrastive_loss(embeddings, embeddings[partner], positive,
                            loss.contrastive_margin, loss.contrastive_floor)

  def sd_discriminator_loss(self, index, params, collections, real, fake, sentence,
                            wrong_sentence, partner, positive):
    """AttnGAN's D objective + the contrastive loss of the real pairs."""
    d = self.discriminators[index]
    out_real, collections = gan._apply(d, {'params': params, **collections}, real,
                                       sentence, train=True)
    out_fake, collections = gan._apply(d, {'params': params, **collections}, fake,
                                       sentence, train=True)
    wrong, collections = gan._apply(d, {'params': params, **collections},
                                    out_real['features'], wrong_sentence,
                                    method=d.cond_logits, train=True)
    cond_real = gan.bce(out_real['cond'], 1)
    cond_fake, cond_wrong = gan.bce(out_fake['cond'], 0), gan.bce(wrong, 0)
    real_loss, fake_loss = gan.bce(out_real['uncond'], 1), gan.bce(out_fake['uncond'], 0)
    adversarial = (real_loss + cond_real) / 2 + (fake_loss + cond_fake + cond_wrong) / 3
    contrastive = self._contrastive(out_real['siamese'], partner, positive)
    loss = adversarial + self.config.loss.contrastive_weight_d * contrastive
    return loss, ({f'D{index}_loss': loss, f'D{index}_real': cond_real,
                   f'D{index}_wrong': cond_wrong,
                   f'D{index}_contrastive': contrastive}, collections)

  def sd_generator_adversarial(self, index, params, collections, fake, sentence,
                               partner, positive):
    """AttnGAN's G terms of one stage and the contrastive loss of the fake pairs."""
    d = self.discriminators[index]
    out, collections = gan._apply(d, {'params': params, **collections}, fake, sentence,
                                  train=True)
    adversarial = gan.bce(out['cond'], 1) + gan.bce(out['uncond'], 1)
    contrastive = self._contrastive(out['siamese'], partner, positive)
    return adversarial, contrastive, collections

  def train_step(self, state, batch):
    key = state.step_key()
    k_z, k_ca = jax.random.split(key)
    words, sentence, mask = self.encode_text(state, batch['caption'], batch['caption_len'])
    _, wrong_sentence, _ = self.encode_text(state, batch['wrong_caption'],
                                            batch['wrong_caption_len'])
    partner, positive = siamese_pairs(batch['class_id'])
    z = jax.random.normal(k_z, (sentence.shape[0], self.config.model.z_dim))
    g = state.nets['G']

    def generator(params):
      out, collections = self.generate(g, params, z, sentence, words, mask, k_ca,
                                       train=True)
      return (out['images'], out['mu'], out['logvar']), collections

    (fakes, mu, logvar), pull_back, g_collections = jax.vjp(generator, g.params,
                                                            has_aux=True)
    reals = self.real_images(batch)
    nets = dict(state.nets)
    metrics = {'siamese_positive_fraction': jnp.mean(positive.astype(jnp.float32))}
    for i in range(len(self.sizes)):
      name = f'D{i}'
      d = nets[name]
      grads, (d_metrics, d_collections) = jax.grad(
          self.sd_discriminator_loss, argnums=1, has_aux=True)(
              i, d.params, d.collections, reals[i], jax.lax.stop_gradient(fakes[i]),
              sentence, wrong_sentence, partner, positive)
      nets[name] = state_lib.apply_updates(d, grads, self.txs[name],
                                           collections=d_collections)
      metrics.update(d_metrics)

    weight_g = self.config.loss.contrastive_weight_g

    def generator_loss(fakes, mu, logvar):
      total, parts, collections = 0.0, {}, {}
      for i in range(len(self.sizes)):
        d = nets[f'D{i}']
        adv, contrastive, collections[f'D{i}'] = self.sd_generator_adversarial(
            i, d.params, d.collections, fakes[i], sentence, partner, positive)
        parts[f'G{i}_adv'] = adv
        parts[f'G{i}_contrastive'] = weight_g * contrastive
        total = total + adv + parts[f'G{i}_contrastive']
      extra = self.generator_extra_losses(state, fakes, words, sentence,
                                          batch['caption_len'], batch)
      parts.update(extra, kl=gan.kl_loss(mu, logvar) * self.config.loss.kl_weight)
      total = total + sum(extra.values()) + parts['kl']
      return total, (parts, collections)

    (g_loss, (g_parts, d_collections)), cotangents = jax.value_and_grad(
        generator_loss, argnums=(0, 1, 2), has_aux=True)(fakes, mu, logvar)
    (g_grads,) = pull_back(cotangents)
    for i in range(len(self.sizes)):
      nets[f'D{i}'] = nets[f'D{i}'].replace(collections=d_collections[f'D{i}'])
    nets['G'] = state_lib.apply_updates(g, g_grads, self.txs['G'],
                                        collections=g_collections,
                                        ema_decay=self.config.optim.ema_decay)
    metrics.update(g_parts, G_loss=g_loss)
    return state.replace(step=state.step + 1, nets=nets), metrics

  sample_command = staticmethod(sampling.sample_command)
