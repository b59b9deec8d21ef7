"""An attribute classifier that judges generated shapes images by captions.

A small CNN with one softmax head per attribute (shape, colour, size,
position, background) is trained on freshly rendered real images of the
procedural shapes data set. Applied to a generator's samples, its predictions
are compared with the attributes each sample's caption states: high agreement
means the image shows what the text asked for, and agreement with captions
shuffled among the images falls to chance, so the score measures text-image
consistency rather than image quality alone. The accuracy on held-out real
images is the upper bound such a score can reach.

Inputs larger than 64 pixels are downscaled to 64 inside the classifier: every
attribute is legible there, and it keeps training and evaluation cheap on a
CPU. Trained parameters are cached on disk, keyed by image size, seed and
VERSION, so evaluating many runs trains once.
"""

import dataclasses
import functools
import json
import os
import time
import zlib
from typing import Mapping, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from t2ijax.data import shapes

# Bump when the network, data or recipe changes, so stale caches are ignored.
VERSION = 2

# Inputs are judged at this side at most (larger ones are downscaled).
MAX_WORKING_SIZE = 64

ATTRIBUTE_NAMES = shapes.ATTRIBUTE_NAMES
REQUIRED = shapes.REQUIRED_IN_CAPTION
NUM_VALUES = {name: len(values) for name, values in shapes.ATTRIBUTES.items()}

_PREDICT_BATCH = 256
# Shape and background are the slowest to learn; weighting their losses up
# gets them there in fewer steps without hurting the easy attributes.
_LOSS_WEIGHTS = {'shape': 2.0, 'background': 1.5}
# Pixel noise comes from a bank drawn once: drawing fresh normals every step
# would cost about as much on a CPU as the network's backward pass.
_NOISE_BANK = 256
# A horizontal flip swaps left and right and keeps every other position; all
# shapes are mirror-symmetric, so no other label changes.
_FLIPPED_POSITION = np.array(
    [shapes.ATTRIBUTES['position'].index(p) for p in
     ('right', 'left', 'top', 'bottom', 'center')], np.int32)


def working_size(image_size: int) -> int:
  """The side images are judged at: at most 64, and a multiple of 8."""
  # A multiple of 8 lets the stem's blocks (2 or 4 pixels) and the strided
  # convolutions tile the image exactly.
  return max(8, min(image_size, MAX_WORKING_SIZE) // 8 * 8)


def _space_to_depth(x: jax.Array, factor: int) -> jax.Array:
  n, h, w, c = x.shape
  x = x.reshape(n, h // factor, factor, w // factor, factor, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(
      n, h // factor, w // factor, factor * factor * c)


class AttributeNet(nn.Module):
  """A patch stem, two strided convolutions, a dense layer, five heads.

  The stem cuts the image into stem_factor^2 pixel blocks and embeds each
  with one dense layer: a strided convolution whose weight gradient is a
  plain matmul. On a CPU XLA's convolution backward passes cost several times
  their forward, and at the input's resolution they would dominate the step.
  The dense layer sees the last map flattened, which keeps where things are
  (for position and size), and pooled, which gives shape and background a
  translation-invariant view.
  """
  stem_factor: int = 4
  stem_width: int = 48
  widths: Sequence[int] = (64, 96)
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = nn.relu(nn.Dense(self.stem_width)(
        _space_to_depth(x, self.stem_factor)))
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
    features = jnp.concatenate(
        [x.reshape(x.shape[0], -1), x.mean(axis=(1, 2)), x.max(axis=(1, 2))],
        axis=-1)
    x = nn.relu(nn.Dense(self.hidden)(features))
    return {name: nn.Dense(n, name=f'{name}_head')(x)
            for name, n in NUM_VALUES.items()}


def model_for(image_size: int) -> AttributeNet:
  """The net for images of this size: its stem leaves a map of ~16x16."""
  # Smaller inputs get smaller blocks, so that a small shape at 32 pixels
  # (about 8 across) still spans several of them.
  return AttributeNet(stem_factor=4 if working_size(image_size) >= 64 else 2)


def _to_unit_range(images) -> jax.Array:
  """uint8 -> [-1, 1]; floats are taken to be in [-1, 1] already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)


def _downscale(x: jax.Array, size: int) -> jax.Array:
  """Antialiased resize of (N, H, W, C) to (N, size, size, C), if needed."""
  if x.shape[1] == size and x.shape[2] == size:
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), 'linear',
                          antialias=True)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict_batch(model: AttributeNet, params, images,
                   size: int) -> dict[str, jax.Array]:
  x = _downscale(_to_unit_range(images), size)
  return {name: jnp.argmax(logits, axis=-1)
          for name, logits in model.apply({'params': params}, x).items()}


def _predict_labels(model: AttributeNet, params, images: np.ndarray,
                    size: int) -> dict[str, np.ndarray]:
  """Labels of any number of images, in fixed-size batches."""
  n = images.shape[0]
  out = {name: np.zeros((n,), np.int32) for name in ATTRIBUTE_NAMES}
  for start in range(0, n, _PREDICT_BATCH):
    chunk = images[start:start + _PREDICT_BATCH]
    # Padding the last batch keeps one compiled shape for all calls.
    pad = _PREDICT_BATCH - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                              chunk.dtype)])
    labels = _predict_batch(model, params, chunk, size)
    for name in ATTRIBUTE_NAMES:
      out[name][start:start + _PREDICT_BATCH] = np.asarray(
          labels[name])[:_PREDICT_BATCH - pad]
  return out


@dataclasses.dataclass
class Classifier:
  """Trained parameters, the image size they judge, their real accuracy."""
  params: dict
  image_size: int
  heldout_accuracy: dict[str, float]

  @property
  def model(self) -> AttributeNet:
    return model_for(self.image_size)

  def predict(self, images) -> dict[str, np.ndarray]:
    """Predicted labels of (N, image_size, image_size, 3) images.

    Args:
      images: uint8 in [0, 255] or floats in [-1, 1], NHWC.

    Returns:
      attribute name -> (N,) int32 labels (indices into shapes.ATTRIBUTES).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (self.image_size,
                                                self.image_size, 3):
      raise ValueError(
          f'expected (N, {self.image_size}, {self.image_size}, 3) images, got '
          f'{images.shape}')
    return _predict_labels(self.model, self.params, images,
                           working_size(self.image_size))

  def real_accuracy(self) -> dict[str, float]:
    """Accuracy on held-out real images: the upper bound for generated ones.

    Same keys as attribute_agreement: every attribute, 'mean' over the four
    a caption always states, and 'all4' (all four right at once).
    """
    return dict(self.heldout_accuracy)


# --- Data.


def render_split(split: str, num: int, image_size: int, seed: int = 0,
                 first: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Renders real images straight from the generator, skipping PNG and captions.

  Args:
    split: a name that seeds the images; the classifier uses its own split
      names, so it never trains on a GAN's evaluation images.
    num: number of images.
    image_size: side the images are rendered at.
    seed: data seed.
    first: index of the first image; images depend only on their index.

  Returns:
    (num, image_size, image_size, 3) uint8 images and (num, 5) int32 labels in
    ATTRIBUTE_NAMES order.
  """
  split_id = zlib.crc32(split.encode('utf-8'))
  images = np.empty((num, image_size, image_size, 3), np.uint8)
  labels = np.empty((num, len(ATTRIBUTE_NAMES)), np.int32)
  for i in range(num):
    attribute_rng, render_rng = (
        np.random.default_rng(child) for child in
        np.random.SeedSequence([seed, split_id, first + i]).spawn(2))
    attributes = shapes.sample_attributes(attribute_rng)
    images[i] = shapes.render(attributes, image_size, render_rng)
    labels[i] = [attributes[name] for name in ATTRIBUTE_NAMES]
  return images, labels


@functools.partial(jax.jit, static_argnums=1)
def _downscale_uint8(images: jax.Array, size: int) -> jax.Array:
  x = _downscale(_to_unit_range(images), size)
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _working_split(split: str, num: int, image_size: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
  """render_split, downscaled to the working size chunk by chunk.

  Only the working-size images are kept: 4000 images of 256 pixels would
  take 800 MB, at 64 pixels they take 50.
  """
  size = working_size(image_size)
  if size == image_size:
    return render_split(split, num, image_size, seed)
  images = np.empty((num, size, size, 3), np.uint8)
  labels = np.empty((num, len(ATTRIBUTE_NAMES)), np.int32)
  for start in range(0, num, _PREDICT_BATCH):
    stop = min(start + _PREDICT_BATCH, num)
    chunk, labels[start:stop] = render_split(split, stop - start, image_size,
                                             seed, first=start)
    images[start:stop] = np.asarray(_downscale_uint8(chunk, size))
  return images, labels


# --- Training.


def _draw_augmentation(rng: np.random.Generator,
                       n: int) -> dict[str, np.ndarray]:
  """Per-image augmentation parameters, drawn on the host.

  Threefry inside the jitted step would add seconds of XLA compile time on a
  CPU for a few hundred random numbers per step.
  """
  return {
      'flip': rng.random(n) < 0.5,
      'gain': rng.uniform(0.9, 1.1, (n, 1, 1, 1)).astype(np.float32),
      'bias': rng.uniform(-0.05, 0.05, (n, 1, 1, 1)).astype(np.float32),
      'noise_std': rng.uniform(0.0, 0.08, (n, 1, 1, 1)).astype(np.float32),
      'noise_index': rng.integers(_NOISE_BANK, size=n),
  }


def _augment(x: jax.Array, labels: jax.Array, aug: Mapping[str, jax.Array],
             noise_bank: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mirror (swapping left/right), slight brightness/contrast, pixel noise.

  Kept light: colours stay far from each other and the shape where it is;
  the noise makes the judge less brittle on generators' grainy samples.
  """
  flip = aug['flip']
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  position = ATTRIBUTE_NAMES.index('position')
  flipped = jnp.asarray(_FLIPPED_POSITION)[labels[:, position]]
  labels = labels.at[:, position].set(
      jnp.where(flip, flipped, labels[:, position]))
  noise = noise_bank[aug['noise_index']]
  x = x * aug['gain'] + aug['bias'] + aug['noise_std'] * noise
  return jnp.clip(x, -1.0, 1.0), labels


def _loss(model, params, x, labels):
  logits = model.apply({'params': params}, x)
  return sum(_LOSS_WEIGHTS.get(name, 1.0) *
             optax.softmax_cross_entropy_with_integer_labels(
                 logits[name], labels[:, i]).mean()
             for i, name in enumerate(ATTRIBUTE_NAMES))


def _param_shapes(model: AttributeNet, size: int):
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, size, size, 3)))['params']


def init_params(model: AttributeNet, size: int, seed: int):
  """LeCun-normal kernels and zero biases, drawn with numpy.

  XLA on a CPU takes seconds to compile flax's random initialisers (longer
  than training a few hundred steps of this net); numpy draws the same
  distribution at once.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == 'bias':
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(
        leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, _param_shapes(model, size))


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def _train_step(model, tx, params, opt_state, images, labels, aug,
                noise_bank):
  x, labels = _augment(_to_unit_range(images), labels, aug, noise_bank)
  loss, grads = jax.value_and_grad(
      lambda p: _loss(model, p, x, labels))(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def accuracy_of(predictions: Mapping[str, np.ndarray],
                targets: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Per-attribute accuracy over the attributes `targets` has, mean and all4.

  Each target array may hold -1 where that attribute is not stated; those
  entries are left out of its accuracy.
  """
  out = {}
  for name in ATTRIBUTE_NAMES:
    if name not in targets:
      continue
    stated = targets[name] >= 0
    if stated.any():
      out[name] = float(np.mean(predictions[name][stated] ==
                                targets[name][stated]))
  out['mean'] = float(np.mean([out[name] for name in REQUIRED]))
  out['all4'] = float(np.mean(np.all(
      [predictions[name] == targets[name] for name in REQUIRED], axis=0)))
  return out


def _label_dict(labels: np.ndarray) -> dict[str, np.ndarray]:
  return {name: labels[:, i] for i, name in enumerate(ATTRIBUTE_NAMES)}


def train_classifier(image_size: int, seed: int = 0, num_train: int = 4000,
                     num_heldout: int = 1000, steps: int = 400,
                     batch_size: int = 64,
                     learning_rate: float = 6e-3) -> Classifier:
  """Trains an attribute classifier on real images of the given size.

  Args:
    image_size: side of the images it will judge (32..256 typical).
    seed: seeds the rendered data, initialisation and batches.
    num_train: real training images rendered.
    num_heldout: real held-out images for real_accuracy().
    steps: Adam steps.
    batch_size: images per step.
    learning_rate: peak of a cosine-decayed schedule.

  Returns:
    The trained Classifier, its held-out accuracy measured.
  """
  start = time.time()
  size = working_size(image_size)
  train_images, train_labels = _working_split(
      'classifier_train', num_train, image_size, seed)
  heldout_images, heldout_labels = _working_split(
      'classifier_heldout', num_heldout, image_size, seed)
  rendered = time.time()

  model = model_for(image_size)
  params = init_params(model, size, seed)
  tx = optax.adam(optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, min(50, steps // 10 + 1), steps))
  opt_state = jax.jit(tx.init)(params)  # one compile, not one per leaf
  rng = np.random.default_rng(seed)
  noise_bank = jnp.asarray(rng.standard_normal(
      (_NOISE_BANK, size, size, 3), np.float32))
  order = np.empty((0,), np.int64)
  for step in range(steps):
    if len(order) < batch_size:  # epochs without replacement
      order = np.concatenate([order, rng.permutation(num_train)])
    batch, order = order[:batch_size], order[batch_size:]
    params, opt_state, loss = _train_step(
        model, tx, params, opt_state, train_images[batch],
        train_labels[batch], _draw_augmentation(rng, batch_size), noise_bank)
  loss = float(loss)

  accuracy = accuracy_of(_predict_labels(model, params, heldout_images, size),
                        _label_dict(heldout_labels))
  logging.info(
      'shapes classifier %dpx seed %d: rendered in %.1fs, trained in %.1fs, '
      'final loss %.3f, held-out accuracy %s', image_size, seed,
      rendered - start, time.time() - rendered, loss, accuracy)
  return Classifier(params, image_size, accuracy)


# --- Judging generated images.


def attribute_agreement(classifier: Classifier, images,
                        captions: Sequence[str]) -> dict[str, float]:
  """How often the classifier sees in each image what its caption states.

  Args:
    classifier: a trained Classifier for the images' size.
    images: (N, H, W, 3) uint8 or [-1, 1] float images.
    captions: N captions; images[i] was generated from captions[i].

  Returns:
    Accuracy of the predictions against parse_caption(caption) for each
    attribute (the background only over captions that name it, and left out
    if none does), 'mean' over shape/colour/size/position, and 'all4', the
    fraction of images with all four right.
  """
  if len(captions) != len(images):
    raise ValueError(f'{len(images)} images but {len(captions)} captions')
  stated = [shapes.parse_caption(caption) for caption in captions]
  targets = {name: np.array([s.get(name, -1) for s in stated], np.int32)
             for name in ATTRIBUTE_NAMES}
  return accuracy_of(classifier.predict(images), targets)


def chance_levels() -> dict[str, float]:
  """What attribute_agreement gives when images ignore their captions."""
  out = {name: 1.0 / n for name, n in NUM_VALUES.items()}
  out['mean'] = float(np.mean([out[name] for name in REQUIRED]))
  out['all4'] = float(np.prod([out[name] for name in REQUIRED]))
  return out


# --- The cache.


def cache_path(cache_dir: str, image_size: int, seed: int = 0,
               **train_kwargs) -> str:
  """Path prefix of a cache entry; training arguments given join the key."""
  name = f'shapes_classifier_v{VERSION}_{image_size}px_seed{seed}'
  for key, value in sorted(train_kwargs.items()):
    name += f'_{key}{value}'
  return os.path.join(cache_dir, name)


def _write_atomically(path: str, data: bytes) -> None:
  # A kill mid-write must not leave a truncated file that loads later.
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def save(classifier: Classifier, path: str) -> None:
  """Writes `path`.msgpack (parameters) and `path`.json (the rest), in order."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  _write_atomically(path + '.msgpack',
                    flax.serialization.to_bytes(classifier.params))
  meta = {'version': VERSION, 'image_size': classifier.image_size,
          'heldout_accuracy': classifier.heldout_accuracy}
  # The json is written last, so its presence means the pair is complete.
  _write_atomically(path + '.json', json.dumps(meta, indent=2).encode())


def load(path: str) -> Classifier:
  """Reads what save wrote; the parameters must fit the current network."""
  with open(path + '.json') as f:
    meta = json.load(f)
  size = meta['image_size']
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                          _param_shapes(model_for(size), working_size(size)))
  with open(path + '.msgpack', 'rb') as f:
    params = flax.serialization.from_bytes(template, f.read())
  return Classifier(params, meta['image_size'], meta['heldout_accuracy'])


def load_or_train(cache_dir: str, image_size: int, seed: int = 0,
                  **train_kwargs) -> Classifier:
  """The cached classifier for (image_size, seed, VERSION), trained if absent.

  Args:
    cache_dir: folder holding cached classifiers (created if needed).
    image_size: side of the images to judge.
    seed: training seed.
    **train_kwargs: passed to train_classifier when it has to train; they are
      part of the cache key too.

  Returns:
    The Classifier.
  """
  path = cache_path(cache_dir, image_size, seed, **train_kwargs)
  if os.path.exists(path + '.json') and os.path.exists(path + '.msgpack'):
    return load(path)
  classifier = train_classifier(image_size, seed, **train_kwargs)
  save(classifier, path)
  return classifier

