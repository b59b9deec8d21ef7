"""MirrorGAN's global-local attention (GLAM, official GLAttentionGeneral), NHWC.

Two attentions read text into the image features h (B, H, W, C):

  * word level (local), as AttnGAN's: every pixel takes a softmax over the
    words of h_q . e'_t, with e' = conv_context(words) (bias-free 1x1, nef ->
    C), and reads W_q = sum_t a_{q,t} e'_t (same official padding-mask bug,
    see `t2ijax.nn.attention`);
  * sentence level (global), over channels: s' = linear(c) (Dense with bias
    from the CA code c, 100 -> C officially), broadcast over pixels;
    A = softmax over the C channels of conv_sentence_vis(h * s') (bias-free
    1x1, C -> C), separately at every pixel; S = s' * A.

Parameter paths (torch key -> flax path; 1x1 convs -> Dense kernel =
weight[:, :, 0, 0].T, Linear -> Dense kernel = weight.T):
  att.conv_context        att/conv_context
  att.conv_sentence_vis   att/conv_sentence_vis
  att.linear              att/linear
"""

from typing import Callable, Optional

import flax.linen as nn
import jax

from t2ijax.nn import attention
from t2ijax.nn import layers


def sentence_channel_attention(
    image_features: jax.Array, sentence: jax.Array,
    mix: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The sentence-level attention over channels, given the projected sentence.

  Args:
    image_features: (B, H, W, C) h.
    sentence: (B, C) s', the CA code after `linear`.
    mix: conv_sentence_vis, a per-pixel linear map C -> C.

  Returns:
    weighted: (B, H, W, C) s' * A; weights: (B, H, W, C) A, which sums to 1
    over channels at every pixel.
  """
  tiled = sentence[:, None, None, :]
  logits = mix(image_features * tiled)
  weights = jax.nn.softmax(logits, axis=-1)
  return tiled * weights, weights


class GlobalLocalAttention(nn.Module):
  """GLAttentionGeneral: word context and sentence context per pixel.

  Attributes:
    official_mask_bug: reproduce the official padding-mask bug of the word
      attention (`t2ijax.nn.attention`); False masks each caption with its
      own padding.
  """
  official_mask_bug: bool = False

  @nn.compact
  def __call__(self, image_features: jax.Array, sentence_code: jax.Array,
               words: jax.Array, word_mask: Optional[jax.Array] = None
               ) -> dict[str, jax.Array]:
    """Attends from every pixel over the words and over the channels.

    Args:
      image_features: (B, H, W, C) h.
      sentence_code: (B, ncf) the CA sample c (not mu).
      words: (B, T, nef) word features (zero at padding from the encoder).
      word_mask: (B, T) bool, True at real words; None: all real.

    Returns:
      {'word_context': (B, H, W, C) W, 'sentence_context': (B, H, W, C) S,
       'word_attention': (B, H, W, T), 'sentence_attention': (B, H, W, C)}.
    """
    batch, height, width, channels = image_features.shape
    if sentence_code.ndim != 2 or sentence_code.shape[0] != batch:
      raise ValueError(f'sentence_code must be (B={batch}, ncf); got '
                       f'{sentence_code.shape}.')
    projected = nn.Dense(channels, use_bias=False,
                         kernel_init=layers.orthogonal_init(),
                         name='conv_context')(words)
    queries = image_features.reshape(batch, height * width, channels)
    context, word_weights = attention.attend(
        queries, projected, projected, word_mask, self.official_mask_bug)

    # The family's weights_init: Linear weight orthogonal, bias 0.
    sentence = nn.Dense(channels, kernel_init=layers.orthogonal_init(),
                        bias_init=nn.initializers.zeros, name='linear')(
                            sentence_code)
    mix = nn.Dense(channels, use_bias=False,
                   kernel_init=layers.orthogonal_init(),
                   name='conv_sentence_vis')
    weighted, sentence_weights = sentence_channel_attention(
        image_features, sentence, mix)
    return {
        'word_context': context.reshape(batch, height, width, channels),
        'sentence_context': weighted,
        'word_attention': word_weights.reshape(batch, height, width,
                                               words.shape[1]),
        'sentence_attention': sentence_weights,
    }

