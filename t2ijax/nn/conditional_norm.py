"""Conditional normalisation: per-channel scale and shift predicted from a condition.

Two members of one family, both NHWC, sharing one predictor:

  ConditionalAffine       DF-GAN's `Affine`: y = gamma(c) * x + beta(c), no
                          normalisation at all (reference/stackgan_dfgan_family.md
                          §6.2). gamma and beta are each a Linear -> ReLU ->
                          Linear MLP of the condition whose last Linear starts
                          at weight 0 (bias 1 for gamma, 0 for beta), so the
                          layer starts as the identity.
  ConditionalBatchNorm    plain CBN (de Vries et al. 2017): BatchNorm whose
                          affine is (gamma + dgamma(c)) * x_hat +
                          (beta + dbeta(c)). The condition is a vector (e.g. a
                          sentence embedding), a map (B, H, W, D) for spatially
                          varying deltas (SD-GAN's word-level SCBN after its
                          attention), or integer class labels.
  SemanticConditionedBatchNorm
                          SD-GAN's SCBN: a ConditionalBatchNorm fed by the
                          sentence embedding (sentence level) or by a per-pixel
                          attention read of the words (word level).
  scale_shift             the shared predictor: condition -> (scale, shift).

A float condition enters a Dense on its last axis, so a (B, D) vector gives
per-channel (B, 1, 1, C) parameters and a (B, H, W, D) map per-pixel
(B, H, W, C) ones (a 1x1 convolution); both broadcast against x.

Parameter names follow DF-GAN's state dict (`fc_gamma.linear1.weight` ->
`fc_gamma/linear1/kernel`, the weight transposed); a one-layer predictor has
only `linear1`.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.nn import attention
from t2ijax.nn import torch_compat


def _expand(params: jax.Array, x: jax.Array) -> jax.Array:
  """(B, C) -> (B, 1, 1, C) against an NHWC x; a (B, H, W, C) map stays."""
  if params.ndim == 2 and x.ndim == 4:
    return params[:, None, None, :]
  return params


class ConditionMLP(nn.Module):
  """condition -> [Linear -> ReLU ->] Linear, with torch's names and init.

  Attributes:
    features: output width (the channels being modulated).
    hidden_features: width of the hidden layer; None: `features` (DF-GAN
      2022); 0: no hidden layer (one Linear, as SD-GAN's f_gamma, f_beta).
    out_bias: the last Linear's initial bias (1 for a scale, 0 for a shift
      or a delta).
    zero_init: the last Linear's weight starts at 0 (DF-GAN), so the output
      starts constant; otherwise torch's default init.
  """
  features: int
  hidden_features: Optional[int] = None
  out_bias: float = 0.0
  zero_init: bool = True

  @nn.compact
  def __call__(self, condition: jax.Array) -> jax.Array:
    hidden = self.features if self.hidden_features is None else self.hidden_features
    last_kernel_init = (nn.initializers.zeros if self.zero_init
                        else torch_compat.torch_kernel_init())
    last_bias_init = nn.initializers.constant(self.out_bias)
    if hidden == 0:
      return nn.Dense(self.features, kernel_init=last_kernel_init,
                      bias_init=last_bias_init, name='linear1')(condition)
    # The first Linear keeps torch's default init (weight and bias).
    h = nn.Dense(hidden, kernel_init=torch_compat.torch_kernel_init(),
                 bias_init=torch_compat.torch_bias_init(condition.shape[-1]),
                 name='linear1')(condition)
    return nn.Dense(self.features, kernel_init=last_kernel_init,
                    bias_init=last_bias_init, name='linear2')(nn.relu(h))


def scale_shift(features: int, condition: jax.Array,
                hidden_features: Optional[int], scale_bias: float,
                zero_init: bool) -> tuple[jax.Array, jax.Array]:
  """(scale, shift) from two `ConditionMLP`s named `fc_gamma` and `fc_beta`.

  Call it inside a compact method: the MLPs become children of that module,
  directly under it, as in DF-GAN's state dict.
  """
  scale = ConditionMLP(features, hidden_features, scale_bias, zero_init,
                       name='fc_gamma')(condition)
  shift = ConditionMLP(features, hidden_features, 0.0, zero_init,
                       name='fc_beta')(condition)
  return scale, shift


def class_scale_shift(num_classes: int, features: int, labels: jax.Array,
                      scale_bias: float, zero_init: bool
                      ) -> tuple[jax.Array, jax.Array]:
  """Per-class (scale, shift) tables `gamma_embedding`, `beta_embedding`.

  A lookup equals a bias-free Linear of the one-hot label; call inside a
  compact method, as `scale_shift`.
  """
  if zero_init:
    scale_init = nn.initializers.constant(scale_bias)
    shift_init = nn.initializers.zeros
  else:
    def scale_init(key, shape, dtype=jnp.float32):
      return scale_bias + 0.02 * jax.random.normal(key, shape, dtype)
    shift_init = nn.initializers.normal(0.02)
  scale = nn.Embed(num_classes, features, embedding_init=scale_init,
                   name='gamma_embedding')(labels)
  shift = nn.Embed(num_classes, features, embedding_init=shift_init,
                   name='beta_embedding')(labels)
  return scale, shift


class ConditionalAffine(nn.Module):
  """DF-GAN Affine: gamma(c) * x + beta(c) per channel, nothing normalised.

  Params (torch key -> flax path): `fc_{gamma,beta}.linear{1,2}.{weight,bias}`
  -> `fc_{gamma,beta}/linear{1,2}/{kernel (weight transposed),bias}`.

  Attributes:
    hidden_features: hidden width of the MLPs; None: the channels of x
      (DF-GAN 2022); 256 for the 2020 code.
  """
  hidden_features: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
    """x: (B, H, W, C); condition: (B, D) or (B, H, W, D)."""
    scale, shift = scale_shift(x.shape[-1], condition, self.hidden_features,
                               scale_bias=1.0, zero_init=True)
    return _expand(scale, x) * x + _expand(shift, x)


class ConditionalBatchNorm(nn.Module):
  """BatchNorm with a condition-dependent affine (CBN; SD-GAN's SCBN).

  y = (gamma + dgamma(c)) * x_hat + (beta + dbeta(c)), with x_hat normalised
  by batch statistics in training (running averages updated: apply with
  mutable=['batch_stats']) and by the running averages otherwise; torch's
  BatchNorm defaults (eps 1e-5, momentum 0.1).

  Params: `scale`, `bias` (the unconditional gamma, init 1, and beta, init 0;
  absent without `use_base_affine`), batch_stats under `bn`, and the deltas:
  `fc_{gamma,beta}/linear1[, linear2]` for a float condition, or
  `{gamma,beta}_embedding/embedding` tables for integer labels.

  Attributes:
    hidden_features: hidden width of the delta MLPs (0: one Linear, the
      default; None: the channels of x).
    num_classes: for integer-label conditions, the number of classes.
    use_base_affine: keep an unconditional gamma and beta; without them the
      deltas are the whole affine and dgamma starts at 1.
    zero_init: the deltas' last layer starts at 0, so the layer starts as
      plain BN.
    momentum, epsilon: flax BatchNorm's (0.9 = torch's momentum 0.1).
  """
  hidden_features: Optional[int] = 0
  num_classes: int = 0
  use_base_affine: bool = True
  zero_init: bool = True
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array, *,
               train: bool) -> jax.Array:
    """x: (B, H, W, C); condition: (B, D) or (B, H, W, D) floats, or (B,) ints."""
    channels = x.shape[-1]
    x_hat = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                         epsilon=self.epsilon, use_scale=False, use_bias=False,
                         name='bn')(x)
    # With a base affine the deltas start at 0 around it; without, at 1 and 0.
    scale_bias = 0.0 if self.use_base_affine else 1.0
    if jnp.issubdtype(condition.dtype, jnp.integer):
      if self.num_classes <= 0:
        raise ValueError('ConditionalBatchNorm got integer labels: set num_classes '
                         'to the number of classes.')
      dscale, dshift = class_scale_shift(self.num_classes, channels, condition,
                                         scale_bias, self.zero_init)
    else:
      dscale, dshift = scale_shift(channels, condition, self.hidden_features,
                                   scale_bias, self.zero_init)
    scale, shift = _expand(dscale, x), _expand(dshift, x)
    if self.use_base_affine:
      scale = scale + self.param('scale', nn.initializers.ones, (channels,))
      shift = shift + self.param('bias', nn.initializers.zeros, (channels,))
    return scale * x_hat + shift


SCBN_LEVELS = ('sentence', 'word')


class SemanticConditionedBatchNorm(nn.Module):
  """SD-GAN's semantic-conditioned batch norm (SCBN), sentence or word level.

  y = (gamma + dgamma) * x_hat + (beta + dbeta) with x_hat = BN(x) (batch
  statistics in training, running averages otherwise) and the deltas a
  1-layer Linear (f_gamma, f_beta) of:
    sentence level: the sentence embedding s (B, D), so dgamma, dbeta are
      per channel, broadcast over H and W;
    word level: the visual-semantic embedding of every pixel, i.e. AttnGAN's
      word attention read at x: the words projected to C channels by a
      bias-free perceptron (`att/conv_context`), each pixel's softmax over its
      caption's words of x_q . w_t, and the weighted sum of the projected
      words. The Linear on this (B, H, W, C) map is a 1x1 convolution, so
      dgamma, dbeta vary over space.

  Params: `cbn/{scale,bias}` (gamma init 1, beta init 0),
  `cbn/fc_{gamma,beta}/linear1` (the deltas; zero-initialised so the layer
  starts as plain BN), word level also `att/conv_context`; batch_stats under
  `cbn/bn`.

  Attributes:
    level: 'sentence' or 'word'.
    zero_init: the deltas' Linear starts at 0 (otherwise torch's default).
    official_mask_bug: word level: the AttnGAN padding-mask bug (see
      `t2ijax.nn.attention`); off by default, as SD-GAN has no checkpoint to
      match.
    momentum, epsilon: flax BatchNorm's (torch's defaults).
  """
  level: str = 'sentence'
  zero_init: bool = True
  official_mask_bug: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array,
               word_mask: Optional[jax.Array] = None, *,
               train: bool) -> jax.Array:
    """Normalises x and modulates it by the text.

    Args:
      x: (B, H, W, C) features.
      condition: sentence level (B, D) sentence embeddings; word level
        (B, T, D) word features.
      word_mask: word level: (B, T) bool, True at real words; None: all real.
      train: BN batch statistics (apply with mutable=['batch_stats']).

    Returns:
      (B, H, W, C).
    """
    if self.level not in SCBN_LEVELS:
      raise ValueError(f'SCBN level must be one of {SCBN_LEVELS}; got '
                       f'{self.level!r}.')
    expected_ndim = 2 if self.level == 'sentence' else 3
    if condition.ndim != expected_ndim or condition.shape[0] != x.shape[0]:
      want = '(B, D) sentences' if self.level == 'sentence' else '(B, T, D) words'
      raise ValueError(f'{self.level}-level SCBN takes {want} with B = '
                       f'{x.shape[0]}; got {condition.shape}.')
    if self.level == 'word':
      condition, _ = attention.WordAttention(
          self.official_mask_bug, name='att')(x, condition, word_mask)
    return ConditionalBatchNorm(
        hidden_features=0, use_base_affine=True, zero_init=self.zero_init,
        momentum=self.momentum, epsilon=self.epsilon, name='cbn')(
            x, condition, train=train)
