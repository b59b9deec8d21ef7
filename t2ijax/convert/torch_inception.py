"""PyTorch Inception-v3 state dicts -> variables of `encoders.inception`.

Accepted key layouts (both map onto the same Flax tree):
* torchvision `inception_v3` (also the DAMSM image encoder's Inception part and
  pytorch-fid's `pt_inception-2015-12-05-*.pth`):
  `Mixed_5b.branch1x1.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`,
  `fc.weight`, ...
* pytorch-fid's `InceptionV3` wrapper: `blocks.{b}.{i}.…`, no `fc`.

The Flax modules carry torchvision's names, so a key maps to a Flax path by
splitting on dots; only the leaf (`conv.weight` -> `conv/kernel`, ...) and the
wrapper's block prefixes need tables. Expected names and shapes come from the
Flax model itself, and any mismatch raises one `CheckpointError` that lists
every missing, unexpected and mis-shaped key.
"""

import os
from typing import Any, Mapping, Optional, Union

from flax import traverse_util
import flax.core
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.encoders import inception
from t2ijax.errors import CheckpointError
from t2ijax.errors import ConfigError

# Keys that carry no information for the Flax model.
_IGNORED_SUFFIXES = ('.num_batches_tracked',)  # BN step counters.
_IGNORED_PREFIXES = ('AuxLogits.',)  # Training-only auxiliary head.
# Saved from a `torch.nn.DataParallel` wrapper.
_WRAPPER_PREFIXES = ('module.',)

# pytorch-fid's InceptionV3 groups torchvision's modules into `blocks`.
# (Index 3 of block 0, index 2 of block 1 and index 3 of block 3 are the
# parameter-free pools.)
_PYTORCH_FID_BLOCKS = {
    'blocks.0.0': 'Conv2d_1a_3x3',
    'blocks.0.1': 'Conv2d_2a_3x3',
    'blocks.0.2': 'Conv2d_2b_3x3',
    'blocks.1.0': 'Conv2d_3b_1x1',
    'blocks.1.1': 'Conv2d_4a_3x3',
    'blocks.2.0': 'Mixed_5b',
    'blocks.2.1': 'Mixed_5c',
    'blocks.2.2': 'Mixed_5d',
    'blocks.2.3': 'Mixed_6a',
    'blocks.2.4': 'Mixed_6b',
    'blocks.2.5': 'Mixed_6c',
    'blocks.2.6': 'Mixed_6d',
    'blocks.2.7': 'Mixed_6e',
    'blocks.3.0': 'Mixed_7a',
    'blocks.3.1': 'Mixed_7b',
    'blocks.3.2': 'Mixed_7c',
}

# (torch leaf module, torch tensor) -> (Flax collection, Flax leaf, axis order
# that turns the torch array into the Flax one, or None to keep it).
_LEAVES = {
    ('conv', 'weight'): ('params', 'kernel', (2, 3, 1, 0)),  # OIHW -> HWIO.
    ('bn', 'weight'): ('params', 'scale', None),
    ('bn', 'bias'): ('params', 'bias', None),
    ('bn', 'running_mean'): ('batch_stats', 'mean', None),
    ('bn', 'running_var'): ('batch_stats', 'var', None),
    ('fc', 'weight'): ('params', 'kernel', (1, 0)),  # (out, in) -> (in, out).
    ('fc', 'bias'): ('params', 'bias', None),
}
_TORCH_LEAF_BY_FLAX_LEAF = {
    (collection, module, flax_leaf): (module, torch_leaf, axes)
    for (module, torch_leaf), (collection, flax_leaf, axes) in _LEAVES.items()
}

INFER = 'infer'
_MAX_KEYS_LISTED = 12
_FIX_MISSING = (
    'pass a complete Inception-v3 state dict (torchvision names such as '
    "'Mixed_5b.branch1x1.conv.weight', or pytorch-fid wrapper names such as "
    "'blocks.2.0.branch1x1.conv.weight'); if only fc.* is missing, pass "
    'num_classes=None.')
_FIX_UNEXPECTED = (
    'remove keys that are not part of Inception-v3 before converting (e.g. '
    "a DAMSM image encoder's emb_features.* and emb_cnn_code.*); for fc.*, "
    "leave num_classes='infer' or set it to fc.weight.shape[0].")
_FIX_SHAPE = (
    'the checkpoint is not a standard Inception-v3; check the file, and '
    'num_classes against fc.weight.shape[0].')

_Array = Any  # numpy array or torch tensor.
_FlaxPath = tuple[str, ...]  # (collection, module, ..., leaf).


def _canonical_torch_key(key: str) -> Optional[str]:
  """torchvision-style name of `key`, or None when the key is to be ignored."""
  for prefix in _WRAPPER_PREFIXES:
    if key.startswith(prefix):
      key = key[len(prefix):]
  if key.startswith(_IGNORED_PREFIXES) or key.endswith(_IGNORED_SUFFIXES):
    return None
  parts = key.split('.')
  block = '.'.join(parts[:3])
  if block in _PYTORCH_FID_BLOCKS:
    key = '.'.join([_PYTORCH_FID_BLOCKS[block]] + parts[3:])
  return key


def _flax_path_and_axes(torch_key: str):
  """(Flax path, axis order) for a torchvision key, or None if unknown."""
  parts = torch_key.split('.')
  if len(parts) < 2 or tuple(parts[-2:]) not in _LEAVES:
    return None
  collection, flax_leaf, axes = _LEAVES[tuple(parts[-2:])]
  return (collection, *parts[:-1], flax_leaf), axes


def _torch_key_and_shape(path: _FlaxPath, flax_shape: tuple[int, ...]):
  """Inverse of `_flax_path_and_axes`, for naming missing keys in errors."""
  collection, *modules, leaf_module, flax_leaf = path
  _, torch_leaf, axes = _TORCH_LEAF_BY_FLAX_LEAF[
      (collection, leaf_module, flax_leaf)]
  torch_shape = flax_shape
  if axes is not None:
    torch_shape = tuple(flax_shape[i] for i in np.argsort(axes))
  return '.'.join([*modules, leaf_module, torch_leaf]), tuple(torch_shape)


def _expected_flax_shapes(flavor: str,
                          num_classes: Optional[int]) -> dict[_FlaxPath, tuple]:
  model = inception.InceptionV3(flavor=flavor, num_classes=num_classes)
  abstract = jax.eval_shape(
      model.init, jax.random.key(0),
      jnp.zeros((1, inception.FID_IMAGE_SIZE, inception.FID_IMAGE_SIZE, 3)))
  flat = traverse_util.flatten_dict(flax.core.unfreeze(abstract))
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _as_float32_numpy(value: _Array) -> np.ndarray:
  if hasattr(value, 'detach'):  # A torch tensor; torch is not imported here.
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # numpy has no bfloat16.
    value = value.numpy()
  return np.asarray(value, dtype=np.float32)


def _listing(title: str, lines: list[str], fix: str) -> str:
  shown = lines[:_MAX_KEYS_LISTED]
  more = len(lines) - len(shown)
  text = f'\n  {title} ({len(lines)}):\n    ' + '\n    '.join(shown)
  if more:
    text += f'\n    ... and {more} more'
  return text + f'\n    Fix: {fix}'


def inception_variables_from_state_dict(
    state_dict: Mapping[str, _Array],
    flavor: str = 'torchvision',
    *,
    num_classes: Union[int, None, str] = INFER,
) -> dict[str, Any]:
  """Converts a PyTorch Inception-v3 state dict to `InceptionV3` variables.

  The parameter layout is the same for both flavours; `flavor` selects the
  model the variables are checked against and must be the one they will be
  used with.

  Args:
    state_dict: torch key -> tensor or numpy array, torchvision or pytorch-fid
      wrapper names (see the module doc). `*.num_batches_tracked`,
      `AuxLogits.*` and a leading `module.` are ignored.
    flavor: 'torchvision' or 'fid'.
    num_classes: classifier size of the target `InceptionV3`. 'infer' takes it
      from `fc.weight` (None when there is no fc); an int or None is checked
      strictly against the state dict.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays, for
    `InceptionV3(flavor, num_classes).apply`.

  Raises:
    ConfigError: unknown flavor.
    CheckpointError: listing every missing, unexpected or mis-shaped key
      (shapes in torch layout), with the fix for each kind.
  """
  if flavor not in inception.FLAVORS:
    raise ConfigError(f'Unknown Inception flavor {flavor!r}; use one of '
                      f'{inception.FLAVORS}.')

  found: dict[_FlaxPath, tuple[str, _Array, Optional[tuple[int, ...]]]] = {}
  unexpected = []
  for key, value in state_dict.items():
    torch_key = _canonical_torch_key(key)
    if torch_key is None:
      continue
    location = _flax_path_and_axes(torch_key)
    if location is None:
      unexpected.append(key)
      continue
    path, axes = location
    if path in found:
      unexpected.append(f'{key} (duplicates {found[path][0]})')
      continue
    found[path] = (key, value, axes)

  if num_classes == INFER:
    fc = found.get(('params', 'fc', 'kernel'))
    num_classes = int(fc[1].shape[0]) if fc is not None else None
  expected = _expected_flax_shapes(flavor, num_classes)

  missing, misshaped = [], []
  for path, flax_shape in expected.items():
    torch_key, torch_shape = _torch_key_and_shape(path, flax_shape)
    if path not in found:
      missing.append(torch_key)
    elif tuple(found[path][1].shape) != torch_shape:
      key = found[path][0]
      misshaped.append(f'{key}: has {tuple(found[path][1].shape)}, '
                       f'expected {torch_shape}')
  unexpected += [found[path][0] for path in found if path not in expected]

  if missing or unexpected or misshaped:
    message = ('PyTorch state dict does not match '
               f'InceptionV3(flavor={flavor!r}, num_classes={num_classes}):')
    if missing:
      message += _listing('missing keys', missing, _FIX_MISSING)
    if unexpected:
      message += _listing('unexpected keys', unexpected, _FIX_UNEXPECTED)
    if misshaped:
      message += _listing('keys with the wrong shape (torch layout)',
                          misshaped, _FIX_SHAPE)
    raise CheckpointError(message)

  flat = {}
  for path, (_, value, axes) in found.items():
    array = _as_float32_numpy(value)
    flat[path] = array if axes is None else np.ascontiguousarray(
        array.transpose(axes))
  return traverse_util.unflatten_dict(flat)


def load_torch_file(path: Union[str, os.PathLike]) -> Any:
  """`torch.load(path, weights_only=True)` on CPU, with clear errors.

  Only tensors and plain containers are unpickled, so a file from the
  internet cannot run code.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        'Reading PyTorch checkpoints needs torch; install it with '
        '`pip install -e .[convert]`.') from error
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f'No checkpoint file at {path!r}; check the path.')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # pylint: disable=broad-except
    raise CheckpointError(
        f'torch.load could not read {path!r} as a weights-only checkpoint '
        f'({error}). If the file is trusted, load it with torch.load(..., '
        'weights_only=False) yourself and pass the state dict to '
        'the converter function.') from error


def load_state_dict(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
  """Reads a PyTorch `.pth` state dict into numpy arrays (dtypes kept).

  See `load_torch_file`. A checkpoint of the form {'state_dict': {...}, ...}
  is unwrapped.
  """
  import torch  # pylint: disable=g-import-not-at-top
  loaded = load_torch_file(path)
  if isinstance(loaded, Mapping) and isinstance(loaded.get('state_dict'),
                                                Mapping):
    loaded = loaded['state_dict']
  if not isinstance(loaded, Mapping):
    raise CheckpointError(
        f'{path!r} holds a {type(loaded).__name__}, not a state dict '
        '(a mapping of names to tensors); save model.state_dict() instead.')
  arrays = {}
  for key, value in loaded.items():
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      if value.dtype == torch.bfloat16:
        value = value.float()  # numpy has no bfloat16.
      arrays[key] = value.numpy()
  return arrays


def load_inception(
    path: Union[str, os.PathLike],
    flavor: str = 'torchvision',
    *,
    num_classes: Union[int, None, str] = INFER,
) -> tuple[inception.InceptionV3, dict[str, Any]]:
  """Model and variables from a `.pth`, e.g. pytorch-fid's weights.

  Example: `model, variables = load_inception(
  'pt_inception-2015-12-05-6726825d.pth', 'fid')` then
  `model.apply(variables, fid_preprocess(images))['pool3']`.
  """
  variables = inception_variables_from_state_dict(
      load_state_dict(path), flavor, num_classes=num_classes)
  fc = variables['params'].get('fc')
  model = inception.InceptionV3(
      flavor=flavor,
      num_classes=None if fc is None else int(fc['kernel'].shape[1]))
  return model, variables
