"""StackGAN++ (StackGAN-v2) tree generator and JCU discriminators, NHWC.

Reference: reference/stackgan_dfgan_family.md §5 (hanzhanggit/StackGAN-v2).

Generator (G_NET): CA on the text embedding (Dense to 4 * ef_dim, GLU, split
into mu and logvar) -> concat(c, z) -> INIT_STAGE_G (fc + BN1d + GLU to
(16 gf_dim, 4, 4), four GLU upBlocks) -> 64x64 image; each further branch
tiles c over h, concat(c, h), a GLU 3x3 joint conv, r_num GLU ResBlocks and an
upBlock -> an image at twice the size. The same c feeds every branch. The
unconditional variant (B_CONDITION False) has no CA: the init stage takes z
alone and the branches tile z in place of c, as officially.

Discriminators (D_NET64/128/256): a 16x strided trunk (+ downBlocks and 3x3
blocks for 128 and 256) to (4, 4, 8 df_dim); the conditional head tiles the
condition (G's CA mean) over the 4x4 map, concat(c, x) -> jointConv ->
`logits`; the unconditional head `uncond_logits` reads x alone. The
unconditional variant keeps only `logits`, applied to x. Heads return logits:
the official Sigmoid + BCELoss is the loss's sigmoid cross-entropy.

Parameter paths (torch key, without the `module.` prefix -> flax path; `[BN]`
= weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var):
  ca_net.fc                               ca_net/fc
  h_net1.fc.0 / .fc.1 [BN]                h_net1/fc, h_net1/fc_bn
  h_net1.upsample{i}.1 / .2               h_net1/upsample{i}/conv, /bn
  img_net{i}.img.0                        img_net{i}/img
  h_net{i}.jointConv.0 / .1               h_net{i}/jointConv/conv, /bn
  h_net{i}.residual.{k}.block.{0,1,3,4}   h_net{i}/residual_{k}/{conv1,bn1,
                                          conv2,bn2}
  h_net{i}.upsample.1 / .2                h_net{i}/upsample/conv, /bn
  D img_code_s16.{0,2,5,8} / .{3,6,9}     img_code_s16/conv_{0..3} / bn_{1..3}
  D img_code_s32 / _s32_1 / _s64 / _s64_1 / _s64_2 .0 / .1
                                          same name /conv, /bn
  D logits.0, uncond_logits.0             logits, uncond_logits
  D jointConv.0 / .1                      jointConv/conv, /bn
Official initialisation (orthogonal conv/linear kernels, BN scale N(1, 0.02))
is the shared layers' default.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models import attngan
from t2ijax.nn import layers

# GF_DIM is multiplied by this for the init stage's width at 4x4.
INIT_WIDTH_FACTOR = 16
BASE_SIZE = 64
DISCRIMINATOR_SIZES = (64, 128, 256)


def tile(code: jax.Array, side: int) -> jax.Array:
  """(B, C) -> (B, side, side, C): torch's view(-1, C, 1, 1).repeat(...)."""
  return jnp.broadcast_to(code[:, None, None, :],
                          (code.shape[0], side, side, code.shape[-1]))


class JointConv(nn.Module):
  """Block3x3_relu (a GLU despite the name): conv3x3 to 2F, BN, GLU -> F."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = layers.conv3x3(2 * self.features, name='conv')(x)
    return layers.glu(layers.batch_norm(train, name='bn')(x))


class NextStage(nn.Module):
  """NEXT_STAGE_G: concat(tiled code, h) -> jointConv -> ResBlocks -> upBlock.

  (B, S, S, ngf) -> (B, 2S, 2S, ngf / 2).

  Attributes:
    ngf: channels of h.
    r_num: GLU ResBlocks (R_NUM, 2).
  """
  ngf: int
  r_num: int = 2

  @nn.compact
  def __call__(self, h: jax.Array, code: jax.Array, *,
               train: bool) -> jax.Array:
    x = jnp.concatenate([tile(code, h.shape[1]), h], axis=-1)  # code first
    x = JointConv(self.ngf, name='jointConv')(x, train=train)
    for k in range(self.r_num):
      x = layers.ResBlock(name=f'residual_{k}')(x, train=train)
    return layers.UpBlock(self.ngf // 2, name='upsample')(x, train=train)


class Generator(nn.Module):
  """G_NET: images at 64, 128, 256 (the first `num_branches` of them).

  Attributes:
    gf_dim: GF_DIM (64 for birds); the init stage is 16 gf_dim wide at 4x4
      and branch k (1-based) ends with gf_dim / 2^(k-1) channels.
    ef_dim: EMBEDDING_DIM, the CA code size (128).
    z_dim: noise size (100).
    r_num: ResBlocks per refining branch (2).
    num_branches: TREE.BRANCH_NUM, 1 to 3.
    conditional: B_CONDITION; False: no text, no CA.
  """
  gf_dim: int = 64
  ef_dim: int = 128
  z_dim: int = 100
  r_num: int = 2
  num_branches: int = 3
  conditional: bool = True

  @nn.compact
  def __call__(self, z: jax.Array, embedding: Optional[jax.Array] = None, *,
               ca_key: Optional[jax.Array] = None,
               ca_noise: Optional[jax.Array] = None,
               train: bool = False) -> dict:
    """Generates one image per branch.

    Args:
      z: (B, z_dim) noise, N(0, 1) officially.
      embedding: (B, D) text embedding (conditional only; D is free: 1024 for
        char-CNN-RNN, the DAMSM sentence size on `shapes`).
      ca_key: PRNG key of the CA noise; or pass ca_noise (B, ef_dim).
      ca_noise: the CA noise itself.
      train: BN batch statistics (apply with mutable=['batch_stats']).

    Returns:
      {'images': list of (B, S, S, 3) in [-1, 1], S = 64, 128, 256,
       'mu', 'logvar': (B, ef_dim) the CA Gaussian (None if unconditional)}.
    """
    if not 1 <= self.num_branches <= 3:
      raise ValueError(f'num_branches must be 1, 2 or 3; got '
                       f'{self.num_branches}.')
    if z.shape[1:] != (self.z_dim,):
      raise ValueError(f'z must be (B, {self.z_dim}); got {z.shape}.')
    if self.conditional:
      if embedding is None or embedding.shape[0] != z.shape[0]:
        raise ValueError('the conditional generator needs a (B, D) text '
                         f'embedding for z of shape {z.shape}.')
      code, mu, logvar = layers.ConditioningAugmentation(
          self.ef_dim, 'glu', name='ca_net')(embedding, key=ca_key,
                                              noise=ca_noise)
      init_in = jnp.concatenate([code, z], axis=-1)   # c first
    else:
      # Officially the branches then tile z itself in place of c.
      code, mu, logvar, init_in = z, None, None, z
    h = attngan.InitStage(INIT_WIDTH_FACTOR * self.gf_dim, name='h_net1')(
        init_in, train=train)
    images = [attngan.ImageHead(name='img_net1')(h)]
    for k in range(2, self.num_branches + 1):
      h = NextStage(self.gf_dim // 2**(k - 2), self.r_num, name=f'h_net{k}')(
          h, code, train=train)
      images.append(attngan.ImageHead(name=f'img_net{k}')(h))
    return {'images': images, 'mu': mu, 'logvar': logvar}


class Discriminator(nn.Module):
  """D_NET64 / D_NET128 / D_NET256, joint conditional-unconditional (JCU).

  Use `__call__`, or (apply with method=...) `encode` once and `cond_head` / `uncond_head` on
  its output. Initialise through `__call__` with a condition so that every
  head gets parameters.

  Attributes:
    df_dim: DF_DIM (64).
    ef_dim: the condition's size (EMBEDDING_DIM, 128: G's CA mean).
    image_size: 64, 128 or 256.
    conditional: B_CONDITION; False keeps only `logits`, on the image code.
  """
  df_dim: int = 64
  ef_dim: int = 128
  image_size: int = 64
  conditional: bool = True

  def setup(self):
    if self.image_size not in DISCRIMINATOR_SIZES:
      raise ValueError(f'Discriminator image_size must be one of '
                       f'{DISCRIMINATOR_SIZES}; got {self.image_size}.')
    ndf = self.df_dim
    attngan.add_image_trunk(self, ndf)
    side = attngan.BASE_SIDE
    self.logits = layers.Conv2d(1, side, strides=side, use_bias=True)
    if self.conditional:
      self.jointConv = attngan.trunk_block(8 * ndf, 3)   # pylint: disable=invalid-name
      self.uncond_logits = layers.Conv2d(1, side, strides=side,
                                         use_bias=True)

  def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """(B, S, S, 3) images in [-1, 1] -> (B, 4, 4, 8 df_dim) image code."""
    return attngan.encode_with_trunk(self, images, train)

  def cond_head(self, code: jax.Array, condition: jax.Array, *,
                  train: bool = False) -> jax.Array:
    """(B, 4, 4, 8 df_dim) image code, (B, ef_dim) condition -> (B,) logits."""
    if not self.conditional:
      raise ValueError('This discriminator is unconditional (no jointConv).')
    if condition.shape != (code.shape[0], self.ef_dim):
      raise ValueError(f'condition must be ({code.shape[0]}, {self.ef_dim}); '
                       f'got {condition.shape}.')
    x = jnp.concatenate([tile(condition, code.shape[1]), code], axis=-1)
    return self.logits(self.jointConv(x, train=train)).reshape(-1)

  def uncond_head(self, code: jax.Array) -> jax.Array:
    """(B, 4, 4, 8 df_dim) -> (B,) logits of the unconditional head."""
    head = self.uncond_logits if self.conditional else self.logits
    return head(code).reshape(-1)

  def __call__(self, images: jax.Array, condition: Optional[jax.Array] = None,
               *, train: bool = False) -> dict:
    """Returns {'code', 'uncond': (B,) logits, 'cond': (B,) if conditioned}."""
    code = self.encode(images, train=train)
    out = {'code': code, 'uncond': self.uncond_head(code)}
    if self.conditional and condition is not None:
      out['cond'] = self.cond_head(code, condition, train=train)
    return out
