"""StackGAN's Inception Score classifier: TF-slim checkpoint -> Flax variables.

The CUB / Oxford-flowers Inception Score of StackGAN, StackGAN++, AttnGAN,
DM-GAN and DF-GAN uses hanzhanggit/StackGAN-inception-model: an Inception-v3
of the old TF-slim library (tensorflow/models inception/inception/slim)
fine-tuned on the data set, released as
`inception_finetuned_models/birds_valid299/model.ckpt-5000` (50 bird classes;
the flowers model has 20), plus a background class 0 that the score drops.
The official script restores `tf.train.ExponentialMovingAverage(0.9999)
.variables_to_restore()`: every weight and BatchNorm statistic is read from
its `NAME/ExponentialMovingAverage` copy. So does this converter, falling
back to `NAME` (and saying how many did) where a checkpoint has no copy.

Variable names (no top-level scope): the stem convs are `conv0`..`conv4`, the
blocks `mixed_35x35x256a`, ... (`SCOPE_OF_MODULE`). Inside a block, each
branch has a scope (`branch5x5`, ...) whose unnamed convs are `Conv`,
`Conv_1`, ... in creation order; torchvision's module suffixes (`_1`, `_2`,
`_2a`, `_2b`, ...) sort in that same order, which is how a Flax module path
finds its TF scope. Each conv holds `weights` (HWIO, Flax's layout) and
`BatchNorm/{beta,moving_mean,moving_variance}` (no gamma); the classifier is
`logits/logits/{weights,biases}` on the 2048-d pool. `aux_logits/*`, optimizer
slots and `global_step` are ignored.

    variables, _ = variables_from_checkpoint(read_checkpoint(
        'inception_finetuned_models/birds_valid299/model.ckpt-5000'))
    model = inception.InceptionV3('tf_slim', num_classes=51)

`python -m t2ijax.convert --kind=cub_inception` writes them for the
evaluation (`eval.is_classifier`).
"""

import collections
import collections.abc
import glob
import os
import re
from typing import Any, Mapping, Union

from absl import logging
from flax import traverse_util
import flax.core
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.encoders import inception
from t2ijax.errors import CheckpointError
from t2ijax.errors import ConfigError

FLAVOR = 'tf_slim'
INFER = 'infer'
EMA_SUFFIX = '/ExponentialMovingAverage'
CUB_NUM_CLASSES = 50       # StackGAN-inception-model's default (birds)
FLOWERS_NUM_CLASSES = 20
CHECKPOINT_EXAMPLE = 'inception_finetuned_models/birds_valid299/model.ckpt-5000'
_LAYOUT_HINT = (
    f'pass the checkpoint prefix, e.g. {CHECKPOINT_EXAMPLE}: the file '
    'model.ckpt-5000 itself (TF V1 format) or the prefix of '
    'model.ckpt-5000.index and model.ckpt-5000.data-00000-of-00001 (V2), or '
    'a directory with a `checkpoint` file.')

# Flax module (torchvision's name) -> TF variable scope.
SCOPE_OF_MODULE = {
    'Conv2d_1a_3x3': 'conv0',
    'Conv2d_2a_3x3': 'conv1',
    'Conv2d_2b_3x3': 'conv2',
    'Conv2d_3b_1x1': 'conv3',
    'Conv2d_4a_3x3': 'conv4',
    'Mixed_5b': 'mixed_35x35x256a',
    'Mixed_5c': 'mixed_35x35x288a',
    'Mixed_5d': 'mixed_35x35x288b',
    'Mixed_6a': 'mixed_17x17x768a',
    'Mixed_6b': 'mixed_17x17x768b',
    'Mixed_6c': 'mixed_17x17x768c',
    'Mixed_6d': 'mixed_17x17x768d',
    'Mixed_6e': 'mixed_17x17x768e',
    'Mixed_7a': 'mixed_17x17x1280a',  # sic: slim kept the old scope name
    'Mixed_7b': 'mixed_8x8x2048a',
    'Mixed_7c': 'mixed_8x8x2048b',
    'fc': 'logits/logits',
}
# (collection, Flax leaf module, Flax leaf) -> TF name inside the layer scope.
_LEAVES = {
    ('params', 'conv', 'kernel'): 'weights',
    ('params', 'bn', 'bias'): 'BatchNorm/beta',
    ('batch_stats', 'bn', 'mean'): 'BatchNorm/moving_mean',
    ('batch_stats', 'bn', 'var'): 'BatchNorm/moving_variance',
    ('params', 'fc', 'kernel'): 'weights',
    ('params', 'fc', 'bias'): 'biases',
}
# torchvision's branch module names: `branch5x5_2` is conv `2` of `branch5x5`.
_BRANCH_MODULE = re.compile(r'^(branch\w*?)_(\d+[a-z]?)$')
_MAX_LISTED = 12

_FlaxPath = tuple[str, ...]


def _branch_scopes(modules: list[str]) -> dict[str, str]:
  """Block-level Flax module names -> `branch.../Conv[_k]` scopes."""
  branches = collections.defaultdict(list)
  for module in modules:
    match = _BRANCH_MODULE.match(module)
    branch, order = match.groups() if match else (module, '')
    branches[branch].append((order, module))
  scopes = {}
  for branch, members in branches.items():
    for k, (_, module) in enumerate(sorted(members)):
      scopes[module] = f'{branch}/Conv' + (f'_{k}' if k else '')
  return scopes


def tf_names(flax_paths) -> dict[_FlaxPath, str]:
  """Flax variable paths (collection, module, ..., leaf) -> TF names."""
  block_modules = collections.defaultdict(set)
  for collection, top, *rest in flax_paths:
    if len(rest) == 3:  # (block, branch module, leaf module, leaf)
      block_modules[top].add(rest[0])
  branch_scopes = {block: _branch_scopes(sorted(modules))
                   for block, modules in block_modules.items()}
  names = {}
  for path in flax_paths:
    collection, top, *modules, leaf = path
    leaf_module = modules[-1] if modules else top  # 'conv', 'bn' or 'fc'
    scope = SCOPE_OF_MODULE[top]
    if len(modules) == 2:  # (branch module, leaf module) inside a block
      scope += '/' + branch_scopes[top][modules[0]]
    names[path] = f'{scope}/{_LEAVES[(collection, leaf_module, leaf)]}'
  return names


def _expected_shapes(num_logits: int) -> dict[_FlaxPath, tuple[int, ...]]:
  model = inception.InceptionV3(FLAVOR, num_classes=num_logits)
  size = inception.STACKGAN_IS_IMAGE_SIZE
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, 3)))
  flat = traverse_util.flatten_dict(flax.core.unfreeze(abstract))
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _listing(title: str, lines: list[str]) -> str:
  shown = lines[:_MAX_LISTED]
  text = f'\n  {title} ({len(lines)}):\n    ' + '\n    '.join(shown)
  if len(lines) > len(shown):
    text += f'\n    ... and {len(lines) - len(shown)} more'
  return text


def _num_classes(checkpoint: Mapping[str, Any],
                 num_classes: Union[int, str]) -> int:
  """The classes without the background: given, or read from the logits."""
  logits_name = f'{SCOPE_OF_MODULE["fc"]}/weights'
  found = [checkpoint[name] for name in (logits_name + EMA_SUFFIX, logits_name)
           if name in checkpoint]
  outputs = int(np.shape(found[0])[-1]) if found else None
  if num_classes == INFER:
    if outputs is None:
      raise CheckpointError(
          f'The checkpoint has no {logits_name}: it is not a TF-slim '
          f'Inception-v3 classifier. {_LAYOUT_HINT}')
    return outputs - 1
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
      num_classes < 1):
    raise ConfigError(
        f'num_classes={num_classes!r}: give the number of classes without '
        f'the background ({CUB_NUM_CLASSES} CUB, {FLOWERS_NUM_CLASSES} '
        f'flowers) or {INFER!r}; the IS needs the classifier.')
  if outputs is not None and outputs != num_classes + 1:
    raise CheckpointError(
        f'{logits_name} has {outputs} outputs: a classifier of {outputs - 1} '
        f'classes plus the background, not num_classes={num_classes}. Pass '
        f'--num_classes={outputs - 1} (CUB {CUB_NUM_CLASSES}, flowers '
        f'{FLOWERS_NUM_CLASSES}) or leave it to infer.')
  return num_classes


def variables_from_checkpoint(
    checkpoint: Mapping[str, Any],
    num_classes: Union[int, str] = INFER,
) -> tuple[dict[str, Any], list[str]]:
  """Flax variables of InceptionV3('tf_slim', num_classes + 1).

  Args:
    checkpoint: TF variable name -> array, e.g. `read_checkpoint(prefix)`.
      Only the names the model needs are read.
    num_classes: classes without the background (50 CUB, 20 flowers), or
      'infer' to take it from `logits/logits/weights`.

  Returns:
    ({'params', 'batch_stats'} of float32 numpy arrays, the TF names read
    without their ExponentialMovingAverage copy (empty for the released
    checkpoints)).

  Raises:
    CheckpointError: naming every missing or mis-shaped variable, or a
      classifier size other than num_classes + 1.
    ConfigError: a num_classes that is no positive count.
  """
  num_classes = _num_classes(checkpoint, num_classes)
  expected = _expected_shapes(num_classes + 1)
  names = tf_names(expected)
  flat, raw, missing, misshaped = {}, [], [], []
  for path, shape in expected.items():
    name = names[path]
    if name + EMA_SUFFIX in checkpoint:
      read = name + EMA_SUFFIX
    elif name in checkpoint:
      read = name
      raw.append(name)
    else:
      missing.append(f'{name}{EMA_SUFFIX} (or {name}), shape {shape}')
      continue
    value = np.asarray(checkpoint[read], np.float32)
    if value.shape != shape:
      misshaped.append(f'{read}: has {value.shape}, expected {shape}')
      continue
    flat[path] = value
  if missing or misshaped:
    message = ('The checkpoint does not hold a TF-slim Inception-v3 with '
               f'{num_classes} + 1 classes:')
    if missing:
      message += _listing('missing variables', missing)
    if misshaped:
      message += _listing('variables with the wrong shape', misshaped)
    raise CheckpointError(
        message + '\n  Fix: pass StackGAN-inception-model\'s fine-tuned '
        f'checkpoint ({CHECKPOINT_EXAMPLE}, or the flowers one with '
        f'num_classes={FLOWERS_NUM_CLASSES}).')
  if raw:
    logging.warning(
        '%d of %d variables had no %s copy and were read as trained (the '
        'official script restores the averages): %s', len(raw), len(expected),
        EMA_SUFFIX.lstrip('/'), ', '.join(raw[:_MAX_LISTED]))
  else:
    logging.info('All %d variables read from their %s copies.', len(expected),
                 EMA_SUFFIX.lstrip('/'))
  return traverse_util.unflatten_dict(flat), raw


# --- Reading TF checkpoints --------------------------------------------------


def checkpoint_prefix(path: Union[str, os.PathLike]) -> str:
  """The checkpoint prefix `path` names (a prefix, a V2 part file or a dir)."""
  path = os.path.expanduser(os.fspath(path))
  if os.path.isdir(path):
    state = os.path.join(path, 'checkpoint')
    if os.path.isfile(state):
      with open(state) as f:
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"', f.read(),
                          re.MULTILINE)
      if match:
        return os.path.join(path, match.group(1))
    raise CheckpointError(f'{path!r} is a directory without a `checkpoint` '
                          f'file naming its latest checkpoint; {_LAYOUT_HINT}')
  for suffix in (r'\.index', r'\.meta', r'\.data-\d+-of-\d+'):
    match = re.match(rf'^(.*){suffix}$', path)
    if match and (os.path.isfile(match.group(1))
                  or os.path.isfile(match.group(1) + '.index')):
      return match.group(1)
  return path


def checkpoint_files(prefix: str) -> list[str]:
  """The files of the checkpoint `prefix` (V1: one file; V2: index, data)."""
  if os.path.isfile(prefix + '.index'):
    return [prefix + '.index'] + sorted(glob.glob(glob.escape(prefix)
                                                  + '.data-*-of-*'))
  if os.path.isfile(prefix):
    return [prefix]
  raise CheckpointError(f'No TF checkpoint at {prefix!r}; {_LAYOUT_HINT}')


class _CheckpointTensors(collections.abc.Mapping):
  """A TF checkpoint's tensors by name, each read when first asked for."""

  def __init__(self, reader):
    self._reader = reader
    self._shapes = reader.get_variable_to_shape_map()

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._shapes:
      raise KeyError(name)
    return self._reader.get_tensor(name)

  def __contains__(self, name) -> bool:
    return name in self._shapes

  def __iter__(self):
    return iter(self._shapes)

  def __len__(self) -> int:
    return len(self._shapes)


def read_checkpoint(path: Union[str, os.PathLike]) -> Mapping[str, np.ndarray]:
  """The variables of a TF checkpoint (V1 or V2), read lazily by name."""
  prefix = checkpoint_prefix(path)
  checkpoint_files(prefix)  # a clear error when there is nothing there
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError('Reading TF checkpoints needs tensorflow (a core '
                      'dependency of t2ijax); reinstall it.') from error
  try:
    reader = tf.train.load_checkpoint(prefix)
  except Exception as error:  # pylint: disable=broad-except
    raise CheckpointError(
        f'TensorFlow could not read {prefix!r} as a checkpoint ({error}); '
        f'{_LAYOUT_HINT}') from error
  return _CheckpointTensors(reader)
