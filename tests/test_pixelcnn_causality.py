"""The Gated PixelCNN is exactly causal, by gradients, for every variant.

For every output sub-pixel t(c, i, j) = (i * W + j) * 3 + c, the gradient of its
256 logits with respect to the (float) input image must be exactly zero at every
input sub-pixel t' >= t (no leak, including the R -> G -> B order within a pixel)
and nonzero at every t' < t (no blind spot): the image is small enough (6x6) and
the stack deep enough that the receptive field covers the whole past.
reference/pixelcnn_metrics.md A6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.models import pixelcnn as model_lib
from t2ijax.nn import gated_pixelcnn as gp

SIZE = 6
BATCH = 4     # several inputs: a ReLU can zero one input's gradient by chance


def _model(condition='none', spatial=0, words=False):
  # 5 layers: layer 1 sees 2 columns each side, each later one 1 more, so the
  # vertical stack spans the 6 columns; rows are covered likewise.
  return model_lib.PixelCnnModel(
      condition=condition, image_size=SIZE, num_layers=5, features=12, kernel_size=3,
      first_kernel_size=5, skip_features=12, head_features=24, spatial_features=spatial,
      word_attention=words, bottleneck=8, encoder_width=8,
      # Random (not zero) conditioning projections, so conditioning moves the gates.
      zero_init_conditioning=False)


def _cond(condition):
  key = jax.random.key(7)
  if condition == 'class':
    return {'vector': jax.nn.one_hot(jnp.arange(BATCH) % 5, 5)}
  if condition == 'caption':
    k1, k2 = jax.random.split(key)
    return {'vector': jax.random.normal(k1, (BATCH, 10)),
            'words': jax.random.normal(k2, (BATCH, 4, 10)),
            'mask': jnp.array([[1, 1, 0, 0]] * BATCH, bool)}
  if condition == 'autoencoder':
    return {'image': jax.random.uniform(key, (BATCH, SIZE, SIZE, 3)) * 255}
  return {}


# Every conditioned variant has the global path; the spatial ones add s = m(h),
# the caption one also attention over words, the auto-encoder an encoder.
VARIANTS = {
    'unconditional': ('none', 0, False),
    'class_global': ('class', 0, False),
    'caption_global_spatial_words': ('caption', 6, True),
    'autoencoder_decoder': ('autoencoder', 6, False),
}


def _dependency(model, variables, cond, x):
  """|d logits(c, i, j) / d x(c', i', j')| maxed over the batch: (H, W, 3, H, W, 3)."""
  g, s = model.apply(variables, cond, method=model.conditioning)

  def per_subpixel(xx):   # (H, W, 3): each sub-pixel's logits summed over batch and levels
    return model.apply(variables, xx, g, s, method=model.decode).sum(axis=(0, 4))

  jac = jax.jacrev(per_subpixel)(x)                # (H, W, 3, B, H, W, 3)
  return np.asarray(jnp.abs(jac).max(axis=3))


def _order():
  i, j, c = np.meshgrid(np.arange(SIZE), np.arange(SIZE), np.arange(3), indexing='ij')
  return (i * SIZE + j) * 3 + c                    # t of each (i, j, c)


def _check(dep):
  t = _order().reshape(-1)
  dep = dep.reshape(t.size, t.size)
  past = t[None, :] < t[:, None]                   # [output, input]
  leaks = np.argwhere((dep > 0) & ~past)
  blind = np.argwhere((dep == 0) & past)
  return leaks, blind


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_logits_depend_on_exactly_the_past(name):
  condition, spatial, words = VARIANTS[name]
  model = _model(condition, spatial, words)
  x = jax.random.uniform(jax.random.key(1), (BATCH, SIZE, SIZE, 3)) * 255
  cond = _cond(condition)
  variables = model.init(jax.random.key(0), x, cond)
  leaks, blind = _check(_dependency(model, variables, cond, x))
  assert len(leaks) == 0, f'{name}: outputs see their own or future sub-pixels: {leaks[:5]}'
  assert len(blind) == 0, f'{name}: past sub-pixels unseen (blind spot): {blind[:5]}'


def test_check_catches_a_leak(monkeypatch):
  """Negative control: with mask B in the first layer the current sub-pixel leaks in."""
  real = gp.masked_kernel
  monkeypatch.setattr(gp, 'masked_kernel',
                      lambda k, m, *a, **kw: real(k, 'B' if m == 'A' else m, *a, **kw))
  model = _model()
  x = jax.random.uniform(jax.random.key(1), (BATCH, SIZE, SIZE, 3)) * 255
  variables = model.init(jax.random.key(0), x)
  leaks, _ = _check(_dependency(model, variables, {}, x))
  t = _order().reshape(-1)
  # Exactly the diagonal: each sub-pixel now sees itself, and nothing later.
  assert sorted(map(tuple, leaks)) == [(k, k) for k in range(t.size)]


def test_channel_masks():
  # Image channels R, G, B into 6 maps (2 per colour): mask A strict, B inclusive.
  a = gp.channel_mask(3, 6, 'A')
  np.testing.assert_array_equal(a, [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])
  b = gp.channel_mask(3, 6, 'B')
  np.testing.assert_array_equal(b, [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
  # Gate layout [f_R f_G f_B | g_R g_G g_B] over 12 maps of p = 6.
  np.testing.assert_array_equal(gp.group_ids(12, 'gate'), [0, 0, 1, 1, 2, 2] * 2)
  with pytest.raises(ValueError, match='3 colour groups'):
    gp.group_ids(10, 'contiguous')
