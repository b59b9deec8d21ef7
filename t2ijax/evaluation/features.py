"""Batched, mesh-sharded Inception features for FID and the Inception Score.

    model, variables = load_fid_inception('pt_inception-2015-12-05-6726825d.pth')
    extract = BatchedApply(inception_outputs(model), variables, batch_size=50)
    out = extract(uint8_images)      # {'pool3': (N, 2048), 'logits': (N, 1008)}

`BatchedApply` runs any `fn(variables, images) -> dict of (B, ...) arrays` over
fixed-size batches whose rows are split over the mesh's `data` axis (variables
replicated), so one compiled program serves every batch: the last, partial
batch is padded and the padding rows are dropped from the result. Results come
back to the host as numpy arrays; callers reduce them there (fid.RunningStats
in float64, inception_score on the logits). The images are this process's and
the mesh is made of its devices, so every row comes back to it.

Images are NHWC, either uint8 in [0, 255] or floats in [0, 1] (pytorch-fid's
`ToTensor` range); `inception_outputs` applies pytorch-fid's preprocessing
(bilinear to 299 without antialiasing, then 2x - 1) on the device.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a `.pth`
converted on load by t2ijax.convert.torch_inception), or a Flax variables file
written by `save_inception_variables` (`.msgpack`), which loads without torch.

`StackGanClassifier` is the CUB / flowers Inception Score classifier of
StackGAN-inception-model (a directory written by `python -m t2ijax.convert
--kind=cub_inception`) on the same batched, sharded path: its own input
transform (`inception.stackgan_is_preprocess`) and logits without the
background class.
"""

import math
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import flax.core
import flax.serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from t2ijax.encoders import inception
from t2ijax.errors import CheckpointError
from t2ijax.errors import ConfigError

# pytorch-fid's default batch size.
DEFAULT_BATCH_SIZE = 50
WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
               f'fid_weights/{WEIGHTS_FILE}')
WEIGHTS_HINT = (
    f'FID and the Inception Score need the FID Inception weights: download '
    f'{WEIGHTS_FILE} from pytorch-fid\'s GitHub release ({WEIGHTS_URL}) and '
    'pass its path (or a .msgpack written by '
    't2ijax.evaluation.features.save_inception_variables).')
STACKGAN_CLASSIFIER_KIND = 'cub_inception'
STACKGAN_CLASSIFIER_HINT = (
    "Convert StackGAN-inception-model's fine-tuned classifier (CUB: "
    'inception_finetuned_models/birds_valid299/model.ckpt-5000) with python '
    f'-m t2ijax.convert --kind={STACKGAN_CLASSIFIER_KIND} --src=PREFIX '
    '--dst=DIR and pass DIR.')
_TORCH_SUFFIXES = ('.pth', '.pt')

Outputs = dict[str, np.ndarray]
ApplyFn = Callable[[Any, jax.Array], Mapping[str, jax.Array]]


def default_mesh(devices=None) -> jax.sharding.Mesh:
  """This process's (or the given) devices along one `data` axis.

  Local devices: with several processes each one holds all the images (the
  GAN evaluation replicates its outputs) and reduces them itself, so no
  process needs another's rows back.
  """
  devices = list(devices if devices is not None else jax.local_devices())
  return jax.sharding.Mesh(np.asarray(devices), ('data',),
                           axis_types=(AxisType.Auto,))


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; floats are taken to be in [0, 1]."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def inception_outputs(model: inception.InceptionV3) -> ApplyFn:
  """fn(variables, images) -> {'pool3'[, 'logits']} with pytorch-fid's input."""

  def fn(variables, images):
    out = model.apply(variables, inception.fid_preprocess(to_unit_range(images)))
    # Only what FID and IS read leaves the device; the feature maps stay.
    return {k: out[k] for k in ('pool3', 'logits') if k in out}

  return fn


def stackgan_classifier_outputs(model: inception.InceptionV3) -> ApplyFn:
  """fn(variables, images) -> {'logits'} of StackGAN's IS classifier.

  Images are uint8 [0, 255] or floats in [0, 1]. Class 0 is the background
  class the official script drops before its softmax, so the logits returned
  are `logits[:, 1:]`: their softmax is its predictions.
  """

  def fn(variables, images):
    pixels = images.astype(jnp.float32)
    if images.dtype != jnp.uint8:
      pixels = pixels * 255.0  # floats in [0, 1]
    out = model.apply(variables, inception.stackgan_is_preprocess(pixels))
    return {'logits': out['logits'][:, 1:]}

  return fn


class BatchedApply:
  """`fn` over fixed-size batches sharded over the mesh's `data` axis.

  Attributes:
    batch_size: rows per compiled call, a multiple of the data axis size.
    mesh: the mesh the batches are split over.
  """

  def __init__(self, fn: ApplyFn, variables: Any, *,
               mesh: Optional[jax.sharding.Mesh] = None,
               batch_size: int = DEFAULT_BATCH_SIZE):
    if batch_size < 1:
      raise ConfigError(f'batch_size={batch_size} must be at least 1.')
    self.mesh = mesh if mesh is not None else default_mesh()
    if 'data' not in self.mesh.shape:
      raise ConfigError(f'the mesh {dict(self.mesh.shape)} has no `data` axis '
                        'to split batches over.')
    shards = self.mesh.shape['data']
    self.batch_size = math.ceil(batch_size / shards) * shards
    self._batch_sharding = NamedSharding(self.mesh, P('data'))
    replicated = NamedSharding(self.mesh, P())
    self._variables = jax.device_put(variables, replicated)
    self._fn = jax.jit(fn, in_shardings=(replicated, self._batch_sharding),
                       out_shardings=self._batch_sharding)

  def _run(self, rows: np.ndarray) -> Outputs:
    count = rows.shape[0]
    if count < self.batch_size:
      # Zero rows keep the compiled shape; their outputs are dropped below.
      padding = np.zeros((self.batch_size - count, *rows.shape[1:]),
                         rows.dtype)
      rows = np.concatenate([rows, padding])
    out = self._fn(self._variables, jax.device_put(rows, self._batch_sharding))
    return {k: np.asarray(v)[:count] for k, v in jax.device_get(out).items()}

  def iterate(self, images: Iterable[np.ndarray]) -> Iterator[Outputs]:
    """Outputs per batch of `batch_size` rows, for streaming reductions.

    Args:
      images: (B_i, H, W, C) arrays of any B_i with the same H, W, C and dtype,
        e.g. the batches of a data pipeline; rows are regrouped as needed.
    """
    pending, count = [], 0
    for chunk in images:
      chunk = np.asarray(chunk)
      if chunk.ndim != 4:
        raise ConfigError(
            f'expected NHWC image batches (B, H, W, C); got shape {chunk.shape}.')
      if pending and chunk.shape[1:] != pending[0].shape[1:]:
        raise ConfigError(
            f'image batches must share one size; got {pending[0].shape[1:]} '
            f'then {chunk.shape[1:]} (resize them first, or extract each size '
            'separately).')
      pending.append(chunk)
      count += chunk.shape[0]
      while count >= self.batch_size:
        rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
        yield self._run(rows[:self.batch_size])
        rest = rows[self.batch_size:]
        pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
      yield self._run(np.concatenate(pending))

  def __call__(self, images: np.ndarray) -> Outputs:
    """All outputs for `images` (N, H, W, C), concatenated over batches."""
    images = np.asarray(images)
    parts = list(self.iterate(
        images[i:i + self.batch_size]
        for i in range(0, len(images), self.batch_size)))
    if not parts:
      raise ConfigError('no images to extract features from.')
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---- weights ----


def _expected_shapes(model: inception.InceptionV3) -> dict[tuple, tuple]:
  size = inception.FID_IMAGE_SIZE
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, 3)))
  flat = traverse_util.flatten_dict(flax.core.unfreeze(abstract))
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _mismatches(model: inception.InceptionV3, variables: Mapping[str, Any]
                ) -> str:
  """'' when `variables` fit `model`, else the differences, one per line."""
  expected = _expected_shapes(model)
  found = {k: tuple(np.shape(v))
           for k, v in traverse_util.flatten_dict(variables).items()}
  problems = [f'missing {"/".join(k)}' for k in expected if k not in found]
  problems += [f'unexpected {"/".join(k)}' for k in found if k not in expected]
  problems += [f'{"/".join(k)}: has {found[k]}, expected {s}'
               for k, s in expected.items() if k in found and found[k] != s]
  if not problems:
    return ''
  shown = '\n  '.join(problems[:12])
  more = f'\n  ... and {len(problems) - 12} more' if len(problems) > 12 else ''
  return f'\n  {shown}{more}'


def _check_variables(variables: Mapping[str, Any], path: str
                     ) -> inception.InceptionV3:
  """The FID-flavour model these variables fit, or a CheckpointError."""
  fc = variables.get('params', {}).get('fc')
  num_classes = None if fc is None else int(np.shape(fc['kernel'])[1])
  model = inception.InceptionV3('fid', num_classes=num_classes,
                                precision=jax.lax.Precision.HIGHEST)
  problems = _mismatches(model, variables)
  if problems:
    raise CheckpointError(
        f'{path!r} does not hold InceptionV3(flavor="fid") variables:'
        f'{problems}\nFix: write the file with save_inception_variables from '
        f'a converted {WEIGHTS_FILE}.')
  return model


def load_fid_inception(path: Union[str, os.PathLike]
                       ) -> tuple[inception.InceptionV3, dict[str, Any]]:
  """The FID-flavour Inception and its variables from `.pth` or `.msgpack`.

  The model computes in float32 at HIGHEST precision, so TF32 on GPUs cannot
  move the features away from the float32 reference. Its `fc` (1008 classes
  for pytorch-fid's file) is built when the weights have one; the IS needs it.

  Raises:
    ConfigError: no path given (the message says where to get the weights).
    CheckpointError: missing file, or contents that are not these weights.
  """
  path = os.fspath(path) if path else ''
  if not path:
    raise ConfigError(f'No Inception weights given. {WEIGHTS_HINT}')
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise CheckpointError(f'No Inception weights at {path!r}. {WEIGHTS_HINT}')
  if path.endswith(_TORCH_SUFFIXES):
    from t2ijax.convert import torch_inception  # pylint: disable=g-import-not-at-top
    _, variables = torch_inception.load_inception(path, 'fid')
  else:
    with open(path, 'rb') as f:
      try:
        variables = flax.serialization.msgpack_restore(f.read())
      except Exception as error:  # pylint: disable=broad-except
        raise CheckpointError(
            f'{path!r} is neither a PyTorch .pth nor a Flax msgpack file '
            f'({error}). {WEIGHTS_HINT}') from error
    if not isinstance(variables, dict):
      raise CheckpointError(f'{path!r} does not hold a variables dict. '
                            f'{WEIGHTS_HINT}')
  return _check_variables(variables, path), variables


def save_inception_variables(path: Union[str, os.PathLike],
                             variables: Mapping[str, Any]) -> str:
  """Writes variables (e.g. a converted .pth) as msgpack; loads without torch."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  host = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(host))
  os.replace(tmp, path)
  return path


class _BatchedInception:
  """An Inception-v3 function of uint8 images, batched and sharded over the mesh."""

  def __init__(self, model: inception.InceptionV3, outputs, variables: Any, *,
               mesh: Optional[jax.sharding.Mesh] = None,
               batch_size: int = DEFAULT_BATCH_SIZE):
    self.model = model
    self._apply = BatchedApply(outputs, variables, mesh=mesh, batch_size=batch_size)
    self.batch_size = self._apply.batch_size

  def iterate(self, images: Iterable[np.ndarray]) -> Iterator[Outputs]:
    return self._apply.iterate(images)

  def __call__(self, images: np.ndarray) -> Outputs:
    return self._apply(images)


class FidInception(_BatchedInception):
  """pytorch-fid's Inception as a batched, sharded feature extractor.

  `self(images)` -> {'pool3': (N, 2048) FID features, 'logits': (N, 1008)
  when the weights have a classifier}; `self.iterate(batches)` streams.
  """

  def __init__(self, model: inception.InceptionV3, variables: Any, **kwargs):
    super().__init__(model, inception_outputs(model), variables, **kwargs)
    self.has_logits = model.num_classes is not None

  @classmethod
  def from_file(cls, path, **kwargs) -> 'FidInception':
    model, variables = load_fid_inception(path)
    return cls(model, variables, **kwargs)


def load_stackgan_classifier(directory: Union[str, os.PathLike]
                             ) -> tuple[inception.InceptionV3, dict[str, Any]]:
  """StackGAN's IS classifier from a `--kind=cub_inception` directory.

  The model computes in float32 at HIGHEST precision, like the FID Inception.

  Raises:
    CheckpointError: no such directory, or one that does not hold a
      converted cub_inception (the message says how to make one).
  """
  directory = os.path.expanduser(os.fspath(directory))
  if not os.path.isdir(directory):
    raise CheckpointError(f'No converted classifier directory at '
                          f'{directory!r}. {STACKGAN_CLASSIFIER_HINT}')
  from t2ijax.convert import kinds  # pylint: disable=g-import-not-at-top
  try:
    variables, info = kinds.load_variables(directory)
  except CheckpointError as error:
    raise CheckpointError(f'{error} {STACKGAN_CLASSIFIER_HINT}') from error
  except Exception as error:  # pylint: disable=broad-except
    # A truncated msgpack or JSON file raises its library's own errors.
    raise CheckpointError(
        f'{directory!r} could not be read ({type(error).__name__}: '
        f'{error}). {STACKGAN_CLASSIFIER_HINT}') from error
  if info.get('kind') != STACKGAN_CLASSIFIER_KIND:
    raise CheckpointError(
        f'{directory!r} holds a converted {info.get("kind")!r}, not the '
        f'{STACKGAN_CLASSIFIER_KIND} classifier. {STACKGAN_CLASSIFIER_HINT}')
  model_args = info.get('model')
  problems = ' not a variables dict' if not isinstance(variables, dict) else ''
  if (not isinstance(model_args, dict) or model_args.get('flavor') != 'tf_slim'
      or not isinstance(model_args.get('num_classes'), int)
      or set(model_args) != {'flavor', 'num_classes'}):
    problems = ' the model is not InceptionV3(flavor="tf_slim", num_classes=N)'
  if not problems:
    model = inception.InceptionV3(**model_args,
                                  precision=jax.lax.Precision.HIGHEST)
    problems = _mismatches(model, variables)
  if problems:
    raise CheckpointError(
        f'{directory!r} does not hold the classifier its {kinds.INFO_FILE} '
        f'declares ({model_args}):{problems}\nFix: '
        f'{STACKGAN_CLASSIFIER_HINT}')
  return model, variables


class StackGanClassifier(_BatchedInception):
  """StackGAN-inception-model's classifier, batched and sharded like FID's.

  `self(images)` -> {'logits': (N, classes)}, background class dropped, so
  `inception_score.inception_score_from_logits` on them is the official
  CUB / flowers Inception Score; `self.iterate(batches)` streams.
  """

  def __init__(self, model: inception.InceptionV3, variables: Any, **kwargs):
    super().__init__(model, stackgan_classifier_outputs(model), variables, **kwargs)
    self.num_classes = model.num_classes - 1

  @classmethod
  def from_directory(cls, directory, **kwargs) -> 'StackGanClassifier':
    model, variables = load_stackgan_classifier(directory)
    return cls(model, variables, **kwargs)
