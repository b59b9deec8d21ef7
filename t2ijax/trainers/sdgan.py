"""SD-GAN training: the shared GAN step with Siamese pairs and a contrastive loss.

The shared trainer (`t2ijax.trainers.gan`) runs the step; SD-GAN fills in its
hooks `step_context` (the pairs), `discriminator_extra_loss` and
`generator_extra_terms` (the contrastive terms).

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

from t2ijax import errors
from t2ijax.models import sdgan
from t2ijax.trainers import gan
from t2ijax.trainers import sampling


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
  # bfloat16: the shared trainer casts G and D at the network boundary
  # (t2ijax/precision.py); the contrastive loss of their float32 outputs, the
  # BCE terms and the frozen DAMSM stay float32.
  compute_dtypes = ('float32', 'bfloat16')

  def make_generator(self):
    m = self.config.model
    if self.sizes != [64 * 2**i for i in range(len(self.sizes))]:
      raise errors.ConfigError(
          f"data.image_sizes={tuple(self.sizes)}: SD-GAN's stages are 64, 128, 256 (in turn)")
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

  # ---- the shared trainer's hooks: Siamese pairs and the contrastive terms ----
  def step_context(self, batch):
    partner, positive = siamese_pairs(batch['class_id'])
    return ({'partner': partner, 'positive': positive},
            {'siamese_positive_fraction': jnp.mean(positive.astype(jnp.float32))})

  def discriminator_extra_loss(self, index, real_out, context):
    """contrastive_weight_d * the contrastive loss of the real pairs."""
    contrastive = self._contrastive(real_out['siamese'], context['partner'],
                                    context['positive'])
    return (self.config.loss.contrastive_weight_d * contrastive,
            {f'D{index}_contrastive': contrastive})

  def generator_extra_terms(self, index, fake_out, context):
    """contrastive_weight_g * the contrastive loss of the generated pairs."""
    contrastive = self._contrastive(fake_out['siamese'], context['partner'],
                                    context['positive'])
    return {f'G{index}_contrastive': self.config.loss.contrastive_weight_g * contrastive}

  sample_command = staticmethod(sampling.sample_command)
