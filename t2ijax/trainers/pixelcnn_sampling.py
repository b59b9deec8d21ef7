"""Sampling a Gated PixelCNN: naive (a full forward per sub-pixel) and cached.

Both draw sub-pixel t = (i * W + j) * 3 + c with jax.random.categorical under the
key fold_in(key, t), so with the same key they give the same samples whenever
their logits agree (they do, up to float rounding; tests/test_pixelcnn_sampling.py).

The cached sampler (Ramachandran et al. 2017; reference/pixelcnn_metrics.md A7)
keeps, per layer, only what that layer's convolutions still need:
  vertical stack  a cache of the last ceil(n/2) input rows (zero-padded left and
                  right); when a row of the image is complete, every layer's
                  vertical conv runs once on its cache for that whole row, and
                  the pre-activations become the next row's (down-shifted) link;
  horizontal stack a row buffer of the inputs left of the current pixel; per
                  pixel the taps left of it are summed once, and per channel only
                  the current tap, the gate and the 1x1s run, through all layers.
Each new sub-pixel therefore costs work proportional to the number of layers,
not to the image. Rows are a lax.scan, columns a lax.scan inside it, the three
channels are unrolled; the batch axis can be sharded (the trainer jits with the
batch over the mesh's data axis).
"""

import jax
import jax.numpy as jnp

from t2ijax.models import pixelcnn as model_lib
from t2ijax.nn import gated_pixelcnn as gp

_LEVELS = model_lib.NUM_LEVELS


def _subpixel_key(key: jax.Array, t) -> jax.Array:
  return jax.random.fold_in(key, t)


def _draw(key: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """A level per row of (B, 256) logits from softmax(logits / temperature)."""
  return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


def naive_sample(model: model_lib.PixelCnnModel, params, global_cond, spatial_cond,
                 key: jax.Array, batch_size: int, num_steps: int | None = None,
                 temperature: float = 1.0) -> jax.Array:
  """(B, H, W, 3) int32 samples: the whole decoder runs for every sub-pixel.

  num_steps < H * W * 3 stops after that many sub-pixels (the rest stay 0), for
  timing a prefix: every step costs one full forward, whatever t.
  temperature < 1 sharpens every sub-pixel's distribution (1: the model's own).
  """
  size = model.image_size
  total = size * size * 3 if num_steps is None else num_steps
  x0 = jnp.zeros((batch_size, size, size, 3), jnp.int32)

  def step(t, x):
    logits = model.apply({'params': params}, x, global_cond, spatial_cond,
                         method=model.decode)
    i, rest = jnp.divmod(t, size * 3)
    j, c = jnp.divmod(rest, 3)
    row = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
    pix = jax.lax.dynamic_index_in_dim(row, j, axis=1, keepdims=False)
    sub = jax.lax.dynamic_index_in_dim(pix, c, axis=1, keepdims=False)   # (B, 256)
    value = _draw(_subpixel_key(key, t), sub, temperature)
    return x.at[:, i, j, c].set(value)

  return jax.lax.fori_loop(0, total, step, x0)


def _layer_constants(model, params, global_cond, spatial_cond, batch_size):
  """Per layer: masked kernels, biases and conditioning terms (B, H|1, W|1, 2p)."""
  d = params['decoder']
  layers = []
  for i in range(model.num_layers):
    lp = d[f'layer_{i}']
    n = model.first_kernel_size if i == 0 else model.kernel_size
    hk = gp.masked_kernel(lp['h_conv']['kernel'], 'A' if i == 0 else 'B',
                          out_layout='gate')
    p2 = hk.shape[-1]
    cond_v = jnp.zeros((batch_size, 1, 1, p2))
    cond_h = jnp.zeros((batch_size, 1, 1, p2))
    if global_cond is not None:
      g = global_cond.astype(jnp.float32)
      cond_v = cond_v + (g @ lp['v_global']['kernel'] + lp['v_global']['bias'])[:, None, None]
      cond_h = cond_h + (g @ lp['h_global']['kernel'])[:, None, None]
    if spatial_cond is not None:
      cond_v = cond_v + gp.dense(spatial_cond, lp['v_spatial']['kernel'],
                                 lp['v_spatial']['bias'])
      cond_h = cond_h + gp.dense(spatial_cond, lp['h_spatial']['kernel'],
                                 lp['h_spatial']['bias'])
    layers.append(dict(
        n=n, k2=n // 2 + 1,
        v_kernel=lp['v_conv']['kernel'], v_bias=lp['v_conv']['bias'],
        h_kernel=hk, h_bias=lp['h_conv']['bias'],
        link_kernel=lp['link']['kernel'], link_bias=lp['link']['bias'],
        out_kernel=gp.masked_kernel(lp['h_out']['kernel'], 'B'), out_bias=lp['h_out']['bias'],
        skip_kernel=gp.masked_kernel(lp['skip']['kernel'], 'B'), skip_bias=lp['skip']['bias'],
        cond_v=cond_v, cond_h=cond_h))
  k2, b2 = model_lib.head_kernel(params)
  head = dict(k1=gp.masked_kernel(d['head_1']['kernel'], 'B'), b1=d['head_1']['bias'],
              k2=k2, b2=b2)
  return layers, head


def _row_of(cond: jax.Array, r) -> jax.Array:
  """(B, W|1, 2p): row r of a spatial term, or the broadcast global term."""
  if cond.shape[1] == 1:
    return cond[:, 0]
  return jax.lax.dynamic_index_in_dim(cond, r, axis=1, keepdims=False)


def cached_sample(model: model_lib.PixelCnnModel, params, global_cond, spatial_cond,
                  key: jax.Array, batch_size: int, return_logits: bool = False,
                  temperature: float = 1.0):
  """(B, H, W, 3) int32 samples (and their logits (B, H, W, 3, 256) if asked).

  The logits returned are the model's, before dividing by the temperature.
  """
  size, b = model.image_size, batch_size
  layers, head = _layer_constants(model, params, global_cond, spatial_cond, b)
  in_dims = [3] + [model.features] * (model.num_layers - 1)

  def pixel(hbufs, links, conds_h, r, j):
    """Samples pixel (r, j); returns its value, logits and each layer's input."""
    # Everything left of the pixel is known: sum those taps once for the 3 channels.
    pre = []
    for lay, hbuf, link, cond in zip(layers, hbufs, links, conds_h):
      k2 = lay['k2']
      left = jax.lax.dynamic_slice_in_dim(hbuf, j, k2 - 1, axis=1)      # (B, k2-1, C)
      a = jnp.einsum('bkc,kco->bo', left, lay['h_kernel'][0, :k2 - 1]) + lay['h_bias']
      a = a + jax.lax.dynamic_index_in_dim(link, j, axis=1, keepdims=False)
      a = a + (cond[:, 0] if cond.shape[1] == 1 else
               jax.lax.dynamic_index_in_dim(cond, j, axis=1, keepdims=False))
      pre.append(a)
    value = jnp.zeros((b, 3), jnp.int32)
    all_logits = []
    for c in range(3):
      inp = model_lib.scale_input(value)
      inputs, skip = [], 0.0
      for i, (lay, a) in enumerate(zip(layers, pre)):
        inputs.append(inp)
        gated = gp.gate(a + inp @ lay['h_kernel'][0, lay['k2'] - 1])
        out = gp.dense(gated, lay['out_kernel'], lay['out_bias'])
        skip = skip + gp.dense(gated, lay['skip_kernel'], lay['skip_bias'])
        inp = out if i == 0 else out + inp
      hidden = jax.nn.relu(gp.dense(jax.nn.relu(skip), head['k1'], head['b1']))
      k_c = head['k2'].reshape(head['k2'].shape[-2], 3, _LEVELS)[:, c]
      logits = hidden @ k_c + head['b2'].reshape(3, _LEVELS)[c]
      t = (r * size + j) * 3 + c
      drawn = _draw(_subpixel_key(key, t), logits, temperature)
      value = value.at[:, c].set(drawn)
      all_logits.append(logits)
    # Layer 0 reads the finished pixel; deeper layers read features that, by the
    # masks, never depend on the pixel's last channel, so those of c = 2 are final.
    inputs[0] = model_lib.scale_input(value)
    return value, jnp.stack(all_logits, axis=1), inputs

  def row_step(carry, r):
    vcaches, prev_hv = carry
    links = [gp.dense(hv, lay['link_kernel'], lay['link_bias'])
             for hv, lay in zip(prev_hv, layers)]
    conds_h = [_row_of(lay['cond_h'], r) for lay in layers]
    hbufs0 = [jnp.zeros((b, size + lay['k2'] - 1, c)) for lay, c in zip(layers, in_dims)]

    def col_step(hbufs, j):
      value, logits, inputs = pixel(hbufs, links, conds_h, r, j)
      hbufs = [jax.lax.dynamic_update_index_in_dim(h, x, j + lay['k2'] - 1, axis=1)
               for h, x, lay in zip(hbufs, inputs, layers)]
      return hbufs, (value, logits if return_logits else ())

    _, (values, logits) = jax.lax.scan(col_step, hbufs0, jnp.arange(size))
    row = jnp.swapaxes(values, 0, 1)                                  # (B, W, 3)
    # The row is complete: run every vertical conv once for it.
    new_caches, new_hv = [], []
    inp = model_lib.scale_input(row)
    for lay, cache in zip(layers, vcaches):
      half = lay['n'] // 2
      padded = jnp.pad(inp, ((0, 0), (half, half), (0, 0)))[:, None]
      cache = jnp.concatenate([cache[:, 1:], padded], axis=1)
      hv = gp.conv_valid(cache, lay['v_kernel'], lay['v_bias'])[:, 0]
      hv = hv + _row_of(lay['cond_v'], r)
      new_caches.append(cache)
      new_hv.append(hv)
      inp = gp.gate(hv)
    if return_logits:
      logits = jnp.swapaxes(logits, 0, 1)
    return (new_caches, new_hv), (row, logits)

  vcaches = [jnp.zeros((b, lay['k2'], size + 2 * (lay['n'] // 2), c))
             for lay, c in zip(layers, in_dims)]
  prev_hv = [jnp.zeros((b, size, lay['h_kernel'].shape[-1])) for lay in layers]
  _, (rows, logits) = jax.lax.scan(row_step, (vcaches, prev_hv), jnp.arange(size))
  images = jnp.swapaxes(rows, 0, 1)
  if return_logits:
    return images, jnp.swapaxes(logits, 0, 1)
  return images
