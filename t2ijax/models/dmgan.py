"""DM-GAN generator and discriminators (NHWC).

The generator is AttnGAN's (CA, init stage, image heads; see
`t2ijax.models.attngan`) with each refinement stage's word attention replaced
by a dynamic memory:

  1. Memory writing. h_bar = spatial mean of h, with no gradient into the
     previous stage. Per word, a writing gate g_t = sigmoid(A(e_t) + B(h_bar))
     mixes the word and image memories:
     m_t = relu(M_w(e_t)) * g_t + relu(M_r(h_bar)) * (1 - g_t)   (2 ngf).
  2. Key addressing and value reading. key_t = relu(key(m_t)), value_t =
     relu(value(m_t)) (ngf); each pixel h_j takes a masked softmax over words
     of h_j . key_t and reads o_j = sum_t a_{j,t} value_t (same official
     padding-mask bug as AttnGAN; `official_mask_bug`).
  3. Response gate. r = sigmoid(response_gate(concat(h, o))) (1x1 conv to 1);
     h_new = h * (1 - r) + o * r.
  4. concat(h_new, h_new) -> r_num ResBlocks (2 ngf) -> upBlock to ngf.

The discriminators are AttnGAN's topology with every conv but `outlogits`
spectral-normalised, with a bias, and no BatchNorm anywhere; train them with
mutable=['spectral'] (see `t2ijax.nn.spectral_norm`).

Parameter paths of a memory stage (torch key -> flax path; Conv1d k=1 and
Linear -> Dense kernel (I, O)):
  h_net{i}.A / .B                     h_net{i}/A, h_net{i}/B (no bias)
  h_net{i}.M_w.0 / .M_r.0             h_net{i}/M_w, h_net{i}/M_r
  h_net{i}.key.0 / .value.0           h_net{i}/key, h_net{i}/value
  h_net{i}.response_gate.0            h_net{i}/response_gate (Conv2d 1x1)
  h_net{i}.residual.{k}.block.*       h_net{i}/residual_{k}/... (as AttnGAN)
  h_net{i}.upsample.{1,2}             h_net{i}/upsample/{conv,bn}
SN convs of D: `<layer>.module.weight_bar` -> `<layer>/kernel`,
`.module.bias` -> `bias`, `.module.weight_u` -> spectral `<layer>/u`; the
trunk's Sequential indices 0, 2, 4, 6 -> img_code_s16/conv_{0,1,2,3}.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models import attngan
from t2ijax.nn import attention
from t2ijax.nn import layers


def _conv1d(features: int, fan_in: int, name: str) -> nn.Dense:
  """Conv1d(k=1) with bias as a Dense on the last axis, family init."""
  return nn.Dense(features, kernel_init=layers.orthogonal_init(),
                  bias_init=layers.torch_bias_init(fan_in), name=name)


class MemoryStage(nn.Module):
  """DM-GAN NEXT_STAGE_G: dynamic memory refinement, (H, W) -> (2H, 2W).

  The official stage also takes the CA code and caption lengths but uses
  neither.

  Attributes:
    ngf: channels of h (64 officially).
    r_num: ResBlocks at 2 * ngf (CUB 2, COCO 3).
    official_mask_bug: see `t2ijax.nn.attention`.
  """
  ngf: int
  r_num: int
  official_mask_bug: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, words: jax.Array,
               word_mask: Optional[jax.Array], *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """Refines h with the words.

    Args:
      h: (B, H, W, ngf) image features.
      words: (B, T, nef) word features.
      word_mask: (B, T) bool, True at real words; None: all real.
      train: BN batch statistics.

    Returns:
      (B, 2H, 2W, ngf) features and (B, H, W, T) addressing weights.
    """
    batch, height, width, channels = h.shape
    nef = words.shape[-1]
    memory_width = 2 * channels

    # 1. Memory writing (the official code detaches the pooled image).
    pooled = jax.lax.stop_gradient(jnp.mean(h, axis=(1, 2)))
    dense_no_bias = lambda name: nn.Dense(
        1, use_bias=False, kernel_init=layers.orthogonal_init(), name=name)
    gate = jax.nn.sigmoid(dense_no_bias('A')(words)
                          + dense_no_bias('B')(pooled)[:, None, :])
    from_words = nn.relu(_conv1d(memory_width, nef, 'M_w')(words))
    from_image = nn.relu(_conv1d(memory_width, channels, 'M_r')(pooled))
    memory = from_words * gate + from_image[:, None, :] * (1.0 - gate)

    # 2. Key addressing and value reading.
    keys = nn.relu(_conv1d(channels, memory_width, 'key')(memory))
    values = nn.relu(_conv1d(channels, memory_width, 'value')(memory))
    read, weights = attention.attend(
        h.reshape(batch, height * width, channels), keys, values, word_mask,
        self.official_mask_bug)
    read = read.reshape(batch, height, width, channels)

    # 3. Response gate.
    response = jax.nn.sigmoid(layers.Conv2d(
        1, 1, use_bias=True, name='response_gate')(
            jnp.concatenate([h, read], axis=-1)))
    h_new = h * (1.0 - response) + read * response

    # 4. Residual blocks and upsampling.
    x = jnp.concatenate([h_new, h_new], axis=-1)
    for k in range(self.r_num):
      x = layers.ResBlock(name=f'residual_{k}')(x, train=train)
    x = layers.UpBlock(self.ngf, name='upsample')(x, train=train)
    return x, weights.reshape(batch, height, width, words.shape[1])


class Generator(attngan.Generator):
  """DM-GAN G_NET: AttnGAN's generator with memory refinement stages.

  Same call signature and outputs as `attngan.Generator`; the attention maps
  are the memory addressing weights. Defaults are the released configs
  (ngf 64; r_num CUB 2, COCO 3).
  """
  ngf: int = 64

  def make_next_stage(self, name: str) -> nn.Module:
    return MemoryStage(self.ngf, self.r_num, self.official_mask_bug,
                       name=name)


class Discriminator(attngan.Discriminator):
  """DM-GAN D_NET64/128/256: spectral norm, conv biases, no BatchNorm.

  Same methods and outputs as `attngan.Discriminator`. Training calls must
  make 'spectral' mutable to advance the power iteration.
  """
  ndf: int = 32
  use_spectral_norm: bool = True
