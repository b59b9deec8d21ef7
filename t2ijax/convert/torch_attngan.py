"""Official AttnGAN / DM-GAN netG and netD state dicts -> Flax variables.

Targets: `t2ijax.models.attngan.Generator` / `Discriminator` and
`t2ijax.models.dmgan.Generator` / `Discriminator` (their module docstrings
list the torch key of every Flax path). The released files
(bird_AttnGAN2.pth, coco_AttnGAN2.pth, bird_DMGAN.pth, coco_DMGAN.pth) are
bare state dicts; a `module.` prefix (saved from `nn.DataParallel`) is
stripped and `num_batches_tracked` is ignored.

How it works: the expected tree comes from the Flax model itself
(`jax.eval_shape` of its init), and every Flax path is translated into the
torch key and layout it comes from. Translating in this direction means a
missing torch key is named exactly, and anything left over in the state dict
is reported as unexpected, all in one `CheckpointError`.

Layout rules (reference/attngan_family.md §0.1):
  Conv2d weight (O, I, kh, kw)          -> kernel (kh, kw, I, O)
  Linear (O, I), Conv1d k=1 (O, I, 1)   -> Dense kernel (I, O)
  Conv2d 1x1 used as a Dense (O, I, 1, 1) (`att.conv_context`) -> (I, O)
  BN weight/bias -> params scale/bias; running_mean/var -> batch_stats
  SpectralNorm(Conv2d) `.module.weight_bar` -> kernel, `.module.bias` ->
  bias, `.module.weight_u` -> spectral u (`.module.weight_v` is accepted and
  ignored: it is recomputed from u before use).

The official generators reproduce their attention padding-mask bug
(reference §3.3); build the Flax generator with `official_mask_bug=True` to
run converted weights as they were trained.
"""

import re
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import errors
from t2ijax.models import attngan
from t2ijax.models import dmgan

FAMILIES = ('attngan', 'dmgan')
_GENERATORS = {'attngan': attngan.Generator, 'dmgan': dmgan.Generator}
_DISCRIMINATORS = {'attngan': attngan.Discriminator,
                   'dmgan': dmgan.Discriminator}

# Keys that carry no information for the Flax model.
_IGNORED_SUFFIXES = ('num_batches_tracked',)
_WRAPPER_PREFIX = 'module.'
_MAX_KEYS_LISTED = 12

# Flax (collection, leaf) -> torch tensor name.
_LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
    ('spectral', 'u'): 'weight_u',
}
# Sequential indices of the generator's blocks (reference §3.7).
_RESBLOCK_INDEX = {'conv1': '0', 'bn1': '1', 'conv2': '3', 'bn2': '4'}
_UPBLOCK_INDEX = {'conv': '1', 'bn': '2'}
# Layers the official code wraps in an nn.Sequential with the layer first.
_SEQUENTIAL_FIRST = ('img', 'M_w', 'M_r', 'key', 'value', 'response_gate',
                     'outlogits')
# Conv1d (k=1) layers, stored (O, I, 1), and the 1x1 Conv2d used as a Dense.
_CONV1D = ('M_w', 'M_r', 'key', 'value')
_CONV2D_AS_DENSE = ('conv_context',)
# Discriminator trunk: Flax conv_i / bn_i -> Sequential index, with BN after
# convs 1..3 (AttnGAN) or no BN at all (DM-GAN's spectral-norm trunk).
_TRUNK_INDEX_BN = {'conv_0': '0', 'conv_1': '2', 'bn_1': '3', 'conv_2': '5',
                   'bn_2': '6', 'conv_3': '8', 'bn_3': '9'}
_TRUNK_INDEX_SN = {'conv_0': '0', 'conv_1': '2', 'conv_2': '4', 'conv_3': '6'}

_FIX_MISSING = (
    'pass the complete official state dict (torch.load of the .pth as saved); '
    'if the keys belong to another family or size, use the matching --kind / '
    'converter and check the widths (ngf, r_num, num_stages).')
_FIX_UNEXPECTED = (
    'this is not an official {family} {net} of this topology: check the kind '
    '(AttnGAN vs DM-GAN; AttnDCGAN and MirrorGAN are not supported) and the '
    'widths inferred from the file.')
_FIX_SHAPE = ('the widths differ from the model built; pass the ones the '
              'checkpoint was trained with (or leave them None to infer).')


def as_numpy(value: Any) -> np.ndarray:
  """A float32 NumPy array from a torch tensor (torch is not imported) or array."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # NumPy has no bfloat16.
    value = value.numpy()
  return np.asarray(value, dtype=np.float32)


def strip_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops a leading `module.` from every key and the BN step counters.

  Raises:
    CheckpointError: two keys collide after stripping.
  """
  stripped = {}
  for key, value in state_dict.items():
    name = key[len(_WRAPPER_PREFIX):] if key.startswith(
        _WRAPPER_PREFIX) else key
    if name.endswith(_IGNORED_SUFFIXES):
      continue
    if name in stripped:
      raise errors.CheckpointError(
          f'State dict has both {name!r} and {key!r}; save one model\'s '
          'state_dict() (with or without the DataParallel wrapper), not a mix.')
    stripped[name] = value
  return stripped


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
  return tuple(int(d) for d in state_dict[key].shape)


# --- Topology inference -------------------------------------------------------


def generator_topology(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Family and widths of an official netG, read from its key shapes.

  Args:
    state_dict: a netG state dict (prefixes allowed).

  Returns:
    {'family': 'attngan' | 'dmgan' | None (one stage only: no refinement
     stage tells them apart), 'ngf', 'r_num', 'z_dim', 'ncf', 'nef',
     'num_stages'}.

  Raises:
    CheckpointError: the keys every AttnGAN-family netG has are missing.
  """
  sd = strip_state_dict(state_dict)
  needed = ('ca_net.fc.weight', 'h_net1.fc.0.weight', 'img_net1.img.0.weight')
  missing = [key for key in needed if key not in sd]
  if missing:
    raise errors.CheckpointError(
        f'Not an AttnGAN / DM-GAN netG state dict: missing {missing}. Pass a '
        'netG_epoch_*.pth or a released bird/coco_AttnGAN2.pth / _DMGAN.pth '
        '(AttnDCGAN and MirrorGAN generators are not supported).')
  ca_out, nef = _shape(sd, 'ca_net.fc.weight')
  ncf = ca_out // 4
  ngf = _shape(sd, 'img_net1.img.0.weight')[1]
  num_stages = 1
  while f'img_net{num_stages + 1}.img.0.weight' in sd:
    num_stages += 1
  blocks = {int(m.group(1)) for key in sd
            for m in [re.match(r'h_net2\.residual\.(\d+)\.', key)] if m}
  if 'h_net2.M_w.0.weight' in sd:
    family = 'dmgan'
  elif 'h_net2.att.conv_context.weight' in sd:
    family = 'attngan'
  else:
    family = None
  return {'family': family, 'ngf': ngf,
          'r_num': len(blocks) if blocks else 2,
          'z_dim': _shape(sd, 'h_net1.fc.0.weight')[1] - ncf, 'ncf': ncf,
          'nef': nef, 'num_stages': num_stages}


def discriminator_topology(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Family and widths of an official netD (D_NET64/128/256).

  Returns:
    {'family': 'attngan' (BatchNorm) | 'dmgan' (spectral norm), 'ndf',
     'image_size', 'nef', 'use_uncond'}.

  Raises:
    CheckpointError: not a discriminator of this family.
  """
  sd = strip_state_dict(state_dict)
  if 'img_code_s16.0.module.weight_bar' in sd:
    family, first, joint = ('dmgan', 'img_code_s16.0.module.weight_bar',
                            'COND_DNET.jointConv.0.module.weight_bar')
  elif 'img_code_s16.0.weight' in sd:
    family, first, joint = ('attngan', 'img_code_s16.0.weight',
                            'COND_DNET.jointConv.0.weight')
  else:
    raise errors.CheckpointError(
        'Not an AttnGAN / DM-GAN netD state dict: it has neither '
        'img_code_s16.0.weight nor img_code_s16.0.module.weight_bar. Pass a '
        'netD*.pth of one of these two families.')
  if joint not in sd:
    raise errors.CheckpointError(
        f'netD state dict has no {joint!r}: the conditional head is missing, '
        'so the checkpoint is incomplete or of another family.')
  ndf = _shape(sd, first)[0]
  if any(key.startswith('img_code_s64') for key in sd):
    image_size = 256
  elif any(key.startswith('img_code_s32') for key in sd):
    image_size = 128
  else:
    image_size = 64
  return {'family': family, 'ndf': ndf, 'image_size': image_size,
          'nef': _shape(sd, joint)[1] - 8 * ndf,
          'use_uncond': any(k.startswith('UNCOND_DNET.') for k in sd)}


# --- Flax path -> torch key ---------------------------------------------------


def _generator_module_name(modules: tuple[str, ...]) -> str:
  """Dotted torch module name of a Flax generator module path."""
  out = []
  for i, name in enumerate(modules):
    parent = modules[i - 1] if i else ''
    block = re.fullmatch(r'residual_(\d+)', name)
    if block:
      out += ['residual', block.group(1), 'block']
    elif parent.startswith('residual_'):
      out.append(_RESBLOCK_INDEX[name])
    elif parent.startswith('upsample'):
      out.append(_UPBLOCK_INDEX[name])
    elif parent == 'h_net1' and name == 'fc':
      out += ['fc', '0']
    elif name == 'fc_bn':
      out += ['fc', '1']
    elif name in _SEQUENTIAL_FIRST:
      out += [name, '0']
    else:
      out.append(name)
  return '.'.join(out)


def _discriminator_module_name(modules: tuple[str, ...],
                               spectral: bool) -> str:
  """Dotted torch module name of a Flax discriminator module path."""
  out = []
  for i, name in enumerate(modules):
    parent = modules[i - 1] if i else ''
    if parent == 'img_code_s16':
      out.append((_TRUNK_INDEX_SN if spectral else _TRUNK_INDEX_BN)[name])
    elif parent.startswith(('img_code_s', 'jointConv')):
      out.append({'conv': '0', 'bn': '1'}[name])
    elif name in _SEQUENTIAL_FIRST:
      out += [name, '0']
    else:
      out.append(name)
  return '.'.join(out)


def _torch_layout(path: tuple[str, ...], flax_shape: tuple[int, ...]):
  """(torch shape, function torch array -> Flax array) for a Flax leaf."""
  collection, *modules, leaf = path
  if not (collection == 'params' and leaf == 'kernel'):
    return flax_shape, lambda a: a
  if len(flax_shape) == 4:  # HWIO <- OIHW
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw), lambda a: a.transpose(2, 3, 1, 0)
  cin, cout = flax_shape
  layer = modules[-1]
  if layer in _CONV2D_AS_DENSE:
    torch_shape = (cout, cin, 1, 1)
  elif layer in _CONV1D:
    torch_shape = (cout, cin, 1)
  else:
    torch_shape = (cout, cin)
  return torch_shape, lambda a: a.reshape(cout, cin).T


def _expected(model: nn.Module, init_args: tuple, init_kwargs: dict) -> dict:
  """Flax path -> shape of every variable of `model`, without computing."""
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *init_args, **init_kwargs))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract))
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _listing(title: str, lines: list[str], fix: str) -> str:
  shown = lines[:_MAX_KEYS_LISTED]
  text = f'\n  {title} ({len(lines)}):\n    ' + '\n    '.join(shown)
  if len(lines) > len(shown):
    text += f'\n    ... and {len(lines) - len(shown)} more'
  return text + f'\n    Fix: {fix}'


def _convert(state_dict: Mapping[str, Any], expected: dict, torch_key_of,
             what: str, family: str, net: str,
             ignorable=lambda key: False) -> dict[str, Any]:
  """Checks `state_dict` against `expected` and builds the Flax variables."""
  sd = strip_state_dict(state_dict)
  flat, used = {}, set()
  missing, misshaped = [], []
  for path, flax_shape in expected.items():
    key = torch_key_of(path)
    torch_shape, to_flax = _torch_layout(path, flax_shape)
    if key not in sd:
      missing.append(f'{key} {torch_shape}')
      continue
    used.add(key)
    if _shape(sd, key) != torch_shape:
      misshaped.append(f'{key}: has {_shape(sd, key)}, expected {torch_shape}')
      continue
    flat[path] = np.ascontiguousarray(to_flax(as_numpy(sd[key])))
  unexpected = sorted(k for k in sd if k not in used and not ignorable(k))
  if missing or unexpected or misshaped:
    message = f'PyTorch state dict does not match {what}:'
    if missing:
      message += _listing('missing keys', missing, _FIX_MISSING)
    if unexpected:
      message += _listing('unexpected keys', unexpected,
                          _FIX_UNEXPECTED.format(family=family, net=net))
    if misshaped:
      message += _listing('keys with the wrong shape (torch layout)',
                          misshaped, _FIX_SHAPE)
    raise errors.CheckpointError(message)
  return flax.traverse_util.unflatten_dict(flat)


# --- Generators ---------------------------------------------------------------


def build_generator(family: str, *, ngf: int, r_num: int, z_dim: int = 100,
                    ncf: int = 100, nef: int = 256, num_stages: int = 3,
                    official_mask_bug: bool = True) -> nn.Module:
  """The Flax generator of an official netG's topology (mask bug on)."""
  if family not in _GENERATORS:
    raise errors.ConfigError(
        f'Unknown generator family {family!r}; use one of {FAMILIES}.')
  return _GENERATORS[family](ngf=ngf, r_num=r_num, z_dim=z_dim, ncf=ncf,
                             nef=nef, num_stages=num_stages,
                             official_mask_bug=official_mask_bug)


def generator_variables_from_state_dict(
    state_dict: Mapping[str, Any], family: str, *,
    ngf: Optional[int] = None, r_num: Optional[int] = None,
    z_dim: Optional[int] = None, ncf: Optional[int] = None,
    nef: Optional[int] = None,
    num_stages: Optional[int] = None) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `Generator` from an official netG.

  Args:
    state_dict: torch key -> tensor or array (`module.` prefixes and
      `num_batches_tracked` allowed).
    family: 'attngan' or 'dmgan'.
    ngf, r_num, z_dim, ncf, nef, num_stages: the widths to check against;
      None takes each from the state dict (`generator_topology`). Released
      files: AttnGAN CUB ngf 32 r_num 2, COCO ngf 48 r_num 3; DM-GAN ngf 64,
      r_num 2 (CUB) / 3 (COCO); z_dim = ncf = 100, nef 256, 3 stages.

  Returns:
    float32 NumPy trees for `build_generator(family, **widths).apply`.

  Raises:
    CheckpointError: the file is of the other family, or keys are missing,
      unexpected or mis-shaped (all listed, torch layout).
  """
  if family not in FAMILIES:
    raise errors.ConfigError(
        f'Unknown generator family {family!r}; use one of {FAMILIES}.')
  topology = generator_topology(state_dict)
  found = topology.pop('family')
  if found is not None and found != family:
    raise errors.CheckpointError(
        f'This netG is a {found} generator, not {family}: convert it with '
        f'--kind={found}_netG ({found}_generator_variables).')
  given = dict(ngf=ngf, r_num=r_num, z_dim=z_dim, ncf=ncf, nef=nef,
               num_stages=num_stages)
  widths = {k: topology[k] if v is None else v for k, v in given.items()}
  model = build_generator(family, **widths)
  batch, num_words = 1, 1
  init_args = (jnp.zeros((batch, widths['z_dim'])),
               jnp.zeros((batch, widths['nef'])),
               jnp.zeros((batch, num_words, widths['nef'])))
  expected = _expected(model, init_args, {'ca_noise': jnp.zeros(
      (batch, widths['ncf']))})

  def torch_key(path):
    collection, *modules, leaf = path
    return (_generator_module_name(tuple(modules)) + '.'
            + _LEAF_NAMES[(collection, leaf)])

  what = f'{family} Generator({", ".join(f"{k}={v}" for k, v in widths.items())})'
  return _convert(state_dict, expected, torch_key, what, family, 'netG')


def attngan_generator_variables(state_dict: Mapping[str, Any],
                                **widths) -> dict[str, Any]:
  """`generator_variables_from_state_dict(state_dict, 'attngan', ...)`."""
  return generator_variables_from_state_dict(state_dict, 'attngan', **widths)


def dmgan_generator_variables(state_dict: Mapping[str, Any],
                              **widths) -> dict[str, Any]:
  """`generator_variables_from_state_dict(state_dict, 'dmgan', ...)`."""
  return generator_variables_from_state_dict(state_dict, 'dmgan', **widths)


# --- Discriminators -----------------------------------------------------------


def build_discriminator(family: str, *, ndf: int, image_size: int,
                        nef: int = 256, use_uncond: bool = True) -> nn.Module:
  """The Flax D_NET64/128/256 of an official netD's topology."""
  if family not in _DISCRIMINATORS:
    raise errors.ConfigError(
        f'Unknown discriminator family {family!r}; use one of {FAMILIES}.')
  return _DISCRIMINATORS[family](ndf=ndf, image_size=image_size, nef=nef,
                                 use_uncond=use_uncond)


def discriminator_variables_from_state_dict(
    state_dict: Mapping[str, Any], family: Optional[str] = None, *,
    ndf: Optional[int] = None, image_size: Optional[int] = None,
    nef: Optional[int] = None,
    use_uncond: Optional[bool] = None) -> dict[str, Any]:
  """Variables of `Discriminator` from an official D_NET64/128/256.

  AttnGAN: {'params', 'batch_stats'}. DM-GAN: {'params', 'spectral'}; each
  spectral-norm conv keeps its raw `weight_bar` as the kernel and `weight_u`
  as u, so the Flax layer's power step from u gives the weight the torch
  layer's next forward would use.

  Args:
    state_dict: a netD state dict (prefixes allowed).
    family: 'attngan' or 'dmgan'; None infers it (BN vs spectral norm).
    ndf, image_size, nef, use_uncond: None infers each from the keys.

  Raises:
    CheckpointError: as for the generator.
  """
  topology = discriminator_topology(state_dict)
  found = topology.pop('family')
  family = family or found
  if family != found:
    raise errors.CheckpointError(
        f'This netD is a {found} discriminator, not {family}; convert it as '
        f'{found}.')
  given = dict(ndf=ndf, image_size=image_size, nef=nef, use_uncond=use_uncond)
  widths = {k: topology[k] if v is None else v for k, v in given.items()}
  model = build_discriminator(family, **widths)
  size = widths['image_size']
  expected = _expected(model, (jnp.zeros((1, size, size, 3)),
                               jnp.zeros((1, widths['nef']))), {})
  spectral = family == 'dmgan'
  sn_modules = {path[1:-1] for path in expected if path[0] == 'spectral'}

  def torch_key(path):
    collection, *modules, leaf = path
    name = _discriminator_module_name(tuple(modules), spectral)
    if tuple(modules) in sn_modules:
      tensor = {'kernel': 'weight_bar', 'bias': 'bias', 'u': 'weight_u'}[leaf]
      return f'{name}.module.{tensor}'
    return f'{name}.{_LEAF_NAMES[(collection, leaf)]}'

  what = f'{family} Discriminator({", ".join(f"{k}={v}" for k, v in widths.items())})'
  return _convert(state_dict, expected, torch_key, what, family, 'netD',
                  ignorable=lambda key: key.endswith('.module.weight_v'))
