"""Official DF-GAN checkpoints (2022 code) -> Flax variables of `t2ijax.models.dfgan`.

The released files (`state_epoch_%03d.pth`, reference/stackgan_dfgan_family.md
§6.8) are dicts {'model': {'netG', 'netD', 'netC'}, 'optimizers': ..., 'epoch'};
a bare netG state dict is accepted too. Keys may carry DistributedDataParallel's
`module.` prefix (stripped).

As for AttnGAN/DM-GAN (`torch_attngan`), the expected tree comes from the Flax
model (`jax.eval_shape` of its init) and every Flax path is translated into the
torch key it comes from, so a missing key is named exactly and anything left
over is reported as unexpected, all in one `CheckpointError`. Translation:
  GBlocks_{i} / DBlocks_{i} / conv_r_{j} / joint_conv_{j} -> GBlocks.{i} ...
  to_rgb -> to_rgb.1 (index 0 of the official Sequential is the LeakyReLU)
  kernel -> weight: conv (O, I, kh, kw) -> (kh, kw, I, O); Linear (O, I) -> (I, O)
  DBlocks.{i}.gamma (1,) as is.
`fc`'s 8 ngf * 16 outputs keep torch's (C, 4, 4) order: the Flax NetG reshapes
them the way torch's `view` does.
"""

import re
from typing import Any, Mapping, Optional

import jax
import numpy as np

from t2ijax import errors
from t2ijax.convert import torch_attngan
from t2ijax.convert import torch_inception
from t2ijax.models import dfgan

_INDEXED = re.compile(r'(GBlocks|DBlocks|conv_r|joint_conv)_(\d+)')
_MAX_KEYS_LISTED = 12


def torch_key(path: tuple[str, ...]) -> str:
  """('GBlocks_3', 'c_sc', 'kernel') -> 'GBlocks.3.c_sc.weight'."""
  parts = []
  for name in path:
    match = _INDEXED.fullmatch(name)
    if match:
      parts.extend(match.groups())
    elif name == 'to_rgb':
      parts.append('to_rgb.1')
    elif name == 'kernel':
      parts.append('weight')
    else:
      parts.append(name)
  return '.'.join(parts)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return value.T
  return value


def split_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Optional[dict]]:
  """{'netG', 'netD', 'netC'} state dicts (prefix stripped; None if absent).

  Args:
    checkpoint: a loaded state_epoch_*.pth (with 'model'), its 'model'
      entry, or a bare netG state dict.

  Raises:
    CheckpointError: neither layout.
  """
  # {'model': {...}} as saved, or its {'netG', ...} part (`load_checkpoint`).
  model = checkpoint.get('model', checkpoint)
  if isinstance(model, Mapping) and isinstance(model.get('netG'), Mapping):
    return {name: torch_attngan.strip_state_dict(model[name])
            if isinstance(model.get(name), Mapping) else None
            for name in ('netG', 'netD', 'netC')}
  stripped = torch_attngan.strip_state_dict(checkpoint)
  if 'fc.weight' in stripped and 'to_rgb.1.weight' in stripped:
    return {'netG': stripped, 'netD': None, 'netC': None}
  raise errors.CheckpointError(
      'Not a DF-GAN checkpoint: expected a state_epoch_*.pth dict with '
      "'model': {'netG', 'netD', 'netC'} or a bare NetG state dict (keys "
      f"fc.weight ... to_rgb.1.weight); got keys {sorted(checkpoint)[:8]}. "
      'For AttnGAN / DM-GAN files use --kind=attngan_netG / dmgan_netG.')


def generator_topology(netg: Mapping[str, Any]) -> dict[str, int]:
  """{'ngf', 'z_dim', 'nef', 'image_size'} of a NetG state dict, from its shapes."""
  sd = torch_attngan.strip_state_dict(netg)
  needed = ('fc.weight', 'to_rgb.1.weight',
            'GBlocks.0.fuse1.affine0.fc_gamma.linear1.weight')
  missing = [key for key in needed if key not in sd]
  if missing:
    raise errors.CheckpointError(
        f'Not a DF-GAN NetG state dict: missing {missing}. Pass the netG of '
        'a DF-GAN state_epoch_*.pth (the 2022 code; the 2020 code\'s NetG is '
        'a different network).')
  z_dim = int(np.shape(sd['fc.weight'])[1])
  cond = int(np.shape(sd['GBlocks.0.fuse1.affine0.fc_gamma.linear1.weight'])[1])
  blocks = {int(m.group(1)) for key in sd
            for m in [re.match(r'GBlocks\.(\d+)\.', key)] if m}
  return {'ngf': int(np.shape(sd['to_rgb.1.weight'])[1]), 'z_dim': z_dim,
          'nef': cond - z_dim, 'image_size': 4 * 2 ** len(blocks)}


def _convert(name: str, state_dict: Mapping[str, Any], abstract) -> dict:
  """Fills the `abstract` params tree from `state_dict` or raises one error."""
  flat = dict(jax.tree_util.tree_flatten_with_path(abstract)[0])
  out, missing, wrong = {}, [], []
  used = set()
  for path, leaf in flat.items():
    names = tuple(p.key for p in path)
    key = torch_key(names)
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    value = _to_flax_layout(torch_attngan.as_numpy(state_dict[key]))
    if value.shape != leaf.shape:
      wrong.append(f'{key}: {tuple(np.shape(state_dict[key]))} (expected the '
                   f'layout of {leaf.shape})')
      continue
    node = out
    for part in names[:-1]:
      node = node.setdefault(part, {})
    node[names[-1]] = value
  unexpected = sorted(set(state_dict) - used)
  problems = []
  if missing:
    problems.append(f'missing {missing[:_MAX_KEYS_LISTED]}'
                    + (f' (+{len(missing) - _MAX_KEYS_LISTED} more)'
                       if len(missing) > _MAX_KEYS_LISTED else ''))
  if unexpected:
    problems.append(f'unexpected {unexpected[:_MAX_KEYS_LISTED]}')
  if wrong:
    problems.append(f'mis-shaped {wrong[:_MAX_KEYS_LISTED]}')
  if problems:
    raise errors.CheckpointError(
        f'DF-GAN {name} state dict does not fit the official topology: '
        + '; '.join(problems) + '. Pass the complete state dict as saved by '
        'the 2022 DF-GAN code, and the widths it was trained with.')
  return out


def generator_variables(netg: Mapping[str, Any],
                        widths: Optional[Mapping[str, int]] = None) -> dict:
  """{'params': ...} of `dfgan.NetG` from a NetG state dict.

  Args:
    netg: the state dict (`module.` prefixes allowed).
    widths: {'ngf', 'z_dim', 'nef', 'image_size'}; read from the keys when None.
  """
  sd = torch_attngan.strip_state_dict(netg)
  w = dict(widths or generator_topology(sd))
  model = dfgan.NetG(ngf=w['ngf'], z_dim=w['z_dim'], image_size=w['image_size'])
  abstract = jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, w['z_dim']), np.float32),
      jax.ShapeDtypeStruct((1, w['nef']), np.float32))
  return {'params': _convert('netG', sd, abstract['params'])}


def discriminator_variables(netd: Mapping[str, Any], netc: Mapping[str, Any],
                            image_size: int) -> dict:
  """{'params': {'netD', 'netC'}} of `dfgan.Discriminator` from the two state dicts."""
  sd_d = torch_attngan.strip_state_dict(netd)
  sd_c = torch_attngan.strip_state_dict(netc)
  if 'conv_img.weight' not in sd_d or 'joint_conv.0.weight' not in sd_c:
    raise errors.CheckpointError(
        'Not DF-GAN NetD / NetC state dicts (no conv_img.weight / '
        'joint_conv.0.weight); pass the netD and netC of the same state_epoch file.')
  ndf = int(np.shape(sd_d['conv_img.weight'])[0])
  nef = int(np.shape(sd_c['joint_conv.0.weight'])[1]) - 8 * ndf
  model = dfgan.Discriminator(ndf=ndf, image_size=image_size)
  abstract = jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32),
      jax.ShapeDtypeStruct((1, nef), np.float32))['params']
  return {'params': {'netD': _convert('netD', sd_d, abstract['netD']),
                     'netC': _convert('netC', sd_c, abstract['netC'])}}


def load_checkpoint(path: str) -> dict[str, Optional[dict]]:
  """A DF-GAN .pth file -> {'netG', 'netD', 'netC'} NumPy state dicts (None if absent)."""
  loaded = torch_inception.load_torch_file(path)
  if not isinstance(loaded, Mapping):
    raise errors.CheckpointError(
        f'{path!r} holds a {type(loaded).__name__}, not a DF-GAN checkpoint '
        '(a state_epoch_*.pth dict or a NetG state_dict()).')
  nets = split_checkpoint(loaded)
  return {name: None if sd is None else
          {key: torch_attngan.as_numpy(value) for key, value in sd.items()
           if hasattr(value, 'shape')}
          for name, sd in nets.items()}
