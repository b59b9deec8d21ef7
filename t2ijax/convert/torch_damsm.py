"""Official DAMSM checkpoints (text_encoder*.pth, image_encoder*.pth) -> Flax.

The files are bare PyTorch state dicts (no wrapper, no `module.` prefix). The
functions take such a dict (torch tensors or NumPy arrays; torch itself is not
imported here) and return Flax variable trees for
`t2ijax.encoders.damsm.TextEncoder` / `ImageEncoder`.

LSTM rule: torch stacks the four gates' rows as [i, f, g, o] blocks of H in
weight_ih (4H, I), weight_hh (4H, H), bias_ih and bias_hh (4H,). A flax
LSTMCell has per gate an input Dense without bias (ii, if, ig, io; kernel
(I, H)) and a hidden Dense with bias (hi, hf, hg, ho; kernel (H, H)); the
one bias is b_ih + b_hh, since only their sum enters the gates.
"""

from typing import Any, Iterable, Mapping

import numpy as np

from t2ijax import errors

_GATES = ('i', 'f', 'g', 'o')
_HEAD_KEYS = ('emb_features.weight', 'emb_cnn_code.weight', 'emb_cnn_code.bias')
# Inception-v3 blocks kept by CNN_ENCODER; their keys go to the backbone.
_BACKBONE_PREFIXES = ('Conv2d_', 'Mixed_')


def _to_numpy(value: Any) -> np.ndarray:
  """A float32 NumPy copy of a torch tensor or array-like."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def _check_keys(state_dict: Mapping[str, Any], expected: Iterable[str],
                what: str, allowed_extra=lambda key: False) -> None:
  """Raises CheckpointError naming missing and unexpected keys, if any."""
  expected = set(expected)
  present = set(state_dict)
  missing = sorted(expected - present)
  unexpected = sorted(k for k in present - expected if not allowed_extra(k))
  if missing or unexpected:
    raise errors.CheckpointError(
        f'{what} state dict does not match: missing keys {missing}, '
        f'unexpected keys {unexpected}. Pass the official state dict as saved '
        '(torch.load of the .pth file, without a "module." prefix).')


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
  if array.shape != shape:
    raise errors.CheckpointError(
        f'{name} has shape {array.shape}, expected {shape}.')


def lstm_cell_params(weight_ih: Any, weight_hh: Any, bias_ih: Any,
                     bias_hh: Any) -> dict[str, dict[str, np.ndarray]]:
  """Params of one flax LSTMCell from one direction of a torch LSTM layer.

  Args:
    weight_ih: (4H, I); weight_hh: (4H, H); bias_ih, bias_hh: (4H,).

  Returns:
    {'ii': {'kernel': (I, H)}, ..., 'hi': {'kernel': (H, H), 'bias': (H,)},
     ...} for gates i, f, g, o.
  """
  weight_ih, weight_hh = _to_numpy(weight_ih), _to_numpy(weight_hh)
  bias = _to_numpy(bias_ih) + _to_numpy(bias_hh)
  hidden = weight_hh.shape[1]
  _check_shape('weight_hh', weight_hh, (4 * hidden, hidden))
  _check_shape('weight_ih', weight_ih, (4 * hidden, weight_ih.shape[1]))
  _check_shape('bias', bias, (4 * hidden,))
  params = {}
  for index, gate in enumerate(_GATES):
    rows = slice(index * hidden, (index + 1) * hidden)
    params['i' + gate] = {'kernel': weight_ih[rows].T.copy()}
    params['h' + gate] = {'kernel': weight_hh[rows].T.copy(),
                          'bias': bias[rows].copy()}
  return params


def text_encoder_variables_from_state_dict(
    state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Variables of `TextEncoder` from an official RNN_ENCODER state dict.

  Expects exactly encoder.weight and rnn.{weight_ih,weight_hh,bias_ih,
  bias_hh}_l0 with and without `_reverse` (one bidirectional LSTM layer).

  Returns:
    {'params': {'encoder': {'embedding'}, 'rnn_fwd': {'cell': ...},
     'rnn_bwd': {'cell': ...}}}; build the TextEncoder with
    n_words, embedding_dim = encoder.weight's shape and nef = 2 * H.
  """
  tensors = ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')
  directions = {'rnn_fwd': '_l0', 'rnn_bwd': '_l0_reverse'}
  expected = ['encoder.weight'] + [
      f'rnn.{tensor}{suffix}' for suffix in directions.values()
      for tensor in tensors]
  _check_keys(state_dict, expected, 'RNN_ENCODER')

  params = {'encoder': {'embedding': _to_numpy(state_dict['encoder.weight'])}}
  embedding_dim = params['encoder']['embedding'].shape[1]
  for name, suffix in directions.items():
    cell = lstm_cell_params(
        *(state_dict[f'rnn.{tensor}{suffix}'] for tensor in tensors))
    _check_shape(f'rnn.weight_ih{suffix} (transposed)', cell['ii']['kernel'],
                 (embedding_dim, cell['hi']['kernel'].shape[0]))
    params[name] = {'cell': cell}
  return {'params': params}


def _is_backbone_key(key: str) -> bool:
  return key.startswith(_BACKBONE_PREFIXES)


def image_encoder_heads_from_state_dict(
    state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Params of ImageEncoder's two heads from a CNN_ENCODER state dict.

  Requires emb_features.weight (nef, C, 1, 1), emb_cnn_code.weight (nef, G)
  and emb_cnn_code.bias (nef,). Inception keys (Conv2d_*, Mixed_*) are
  allowed and left for the backbone converter; any other key is an error.

  Returns:
    {'params': {'emb_features': {'kernel': (1, 1, C, nef)},
                'emb_cnn_code': {'kernel': (G, nef), 'bias': (nef,)}}}.
  """
  _check_keys(state_dict, _HEAD_KEYS, 'CNN_ENCODER',
              allowed_extra=_is_backbone_key)
  conv = _to_numpy(state_dict['emb_features.weight'])
  if conv.ndim != 4 or conv.shape[2:] != (1, 1):
    raise errors.CheckpointError(
        f'emb_features.weight has shape {conv.shape}, expected (nef, C, 1, 1).')
  linear = _to_numpy(state_dict['emb_cnn_code.weight'])
  bias = _to_numpy(state_dict['emb_cnn_code.bias'])
  _check_shape('emb_cnn_code.bias', bias, (linear.shape[0],))
  return {'params': {
      'emb_features': {'kernel': conv.transpose(2, 3, 1, 0).copy()},
      'emb_cnn_code': {'kernel': linear.T.copy(), 'bias': bias},
  }}


def image_encoder_variables_from_state_dict(
    state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """All variables of ImageEncoder(backbone='inception_v3') from CNN_ENCODER.

  The heads are converted here; the Inception part, including its BatchNorm
  running statistics (which drifted during DAMSM pretraining and must come
  from this file, not from torchvision's), by
  `t2ijax.convert.torch_inception.inception_variables_from_state_dict`.

  Returns:
    {'params': {'backbone': ..., 'emb_features': ..., 'emb_cnn_code': ...},
     'batch_stats': {'backbone': ...}}.
  """
  heads = image_encoder_heads_from_state_dict(state_dict)
  try:
    # Imported here so the text/heads converters work without it.
    from t2ijax.convert import torch_inception  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.CheckpointError(
        'Converting the Inception-v3 part of a DAMSM image encoder needs '
        't2ijax.convert.torch_inception, which could not be imported: '
        f'{e}') from e
  backbone_sd = {k: v for k, v in state_dict.items() if _is_backbone_key(k)}
  # CNN_ENCODER keeps no classifier, so an fc.* key would be an error.
  backbone = torch_inception.inception_variables_from_state_dict(
      backbone_sd, 'torchvision', num_classes=None)
  variables = {'params': dict(heads['params'])}
  for collection, tree in backbone.items():
    variables.setdefault(collection, {})['backbone'] = tree
  return variables
