"""Converted official checkpoints as runnable t2ijax workdirs.

An official netG needs its DAMSM to run (the text encoder makes its inputs;
the image encoder judges it in evaluation and adds the DAMSM loss in
training), so a netG is written as two workdirs, each an ordinary run
directory of `python -m t2ijax.main`:

  DST/                     the GAN run (configs/attngan.py or dmgan.py)
    config.json, vocab.json
    checkpoints/0/         Orbax: state = G's converted weights as params
                           and as EMA params (the official netG files hold
                           the EMA weights), G's BN statistics, fresh Ds and
                           optimizer states, the frozen DAMSM encoders; data
                           position step 0; the config
    converted.json         provenance and the settings a run must use
  DST/damsm/               the DAMSM run (configs/damsm.py) with the
    config.json, vocab.json, checkpoints/0/, converted.json
                           converted text and image encoders

`apply_settings` (called by `t2ijax.main.run`) reads DST/converted.json and
puts into the command line's config what the weights need: damsm.workdir
(DST/damsm, unless one is given), model.official_mask_bug=True (the released
weights were trained with the attention mask bug) and the data location the
converter was given. So, with the data set prepared,

  python -m t2ijax.main --config=configs/dmgan.py:cub --workdir=DST \
      --mode=sample --config.sample.captions='a small red bird'

samples straight away; --mode=eval needs the image encoder to have been
converted too. --mode=train fine-tunes from step 0 with fresh Ds.

Without --image_encoder, the DAMSM's image encoder is an all-zero placeholder
and eval/train are refused.
"""

import json
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from t2ijax import checkpoint as ckpt_lib
from t2ijax import errors
from t2ijax.convert import kinds
from t2ijax.convert import torch_dfgan
from t2ijax.data import text

CONVERTED_FILE = 'converted.json'
DAMSM_SUBDIR = 'damsm'
FORMAT_VERSION = 1
_STEP = 0
_NETG_FAMILY = {'attngan_netG': 'attngan', 'dmgan_netG': 'dmgan',
                'dfgan_netG': 'dfgan'}


def _check_empty(directory: str) -> None:
  if os.path.isdir(directory) and os.listdir(directory):
    raise errors.ConfigError(
        f'{directory} is not empty: converting writes a fresh workdir. Choose '
        'a new --dst or delete the old one.')


def _write_json(path: str, value: Mapping[str, Any]) -> None:
  with open(path, 'w') as f:
    json.dump(value, f, indent=2)


def _matching(name: str, new: Any, old: Any) -> Any:
  """`new` as arrays shaped like `old` (device arrays), or a clear error."""
  new_flat, new_tree = jax.tree.flatten(new)
  old_flat, old_tree = jax.tree.flatten(old)
  if new_tree != old_tree or any(
      np.shape(a) != np.shape(b) for a, b in zip(new_flat, old_flat)):
    raise errors.ConfigError(
        f'The converted {name} does not fit the model built from the config '
        '(different parameter tree or shapes); check the model widths in the '
        'config against the checkpoint.')
  return jax.tree.unflatten(
      old_tree, [jnp.asarray(a, b.dtype) for a, b in zip(new_flat, old_flat)])


def _save(workdir: str, config, state, vocab: text.Vocab) -> None:
  """config.json, vocab.json and an Orbax checkpoint at step 0."""
  from t2ijax.trainers import loop  # pylint: disable=g-import-not-at-top
  loop.write_config(config, workdir, vocab)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                       use_async=False)
  try:
    checkpointer.save(_STEP, state, {'next_step': _STEP, 'seed': config.seed},
                      config)
  finally:
    checkpointer.close()


# --- DAMSM workdir -------------------------------------------------------------


def write_damsm_workdir(
    directory: str, config: ml_collections.ConfigDict,
    text_state_dict: Mapping[str, Any],
    image_state_dict: Optional[Mapping[str, Any]], vocab: text.Vocab,
    sources: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Writes a DAMSM run directory holding converted official encoders.

  Args:
    directory: where to write (must be empty or absent).
    config: a configs/damsm.py config; its model sizes are set from the
      checkpoints (n_words, embedding_dim, nef; Inception-v3 backbone) and
      train.num_steps to 0 (the run is finished as far as a GAN's DAMSM
      dependency is concerned).
    text_state_dict: RNN_ENCODER state dict (text_encoder*.pth).
    image_state_dict: CNN_ENCODER state dict (image_encoder*.pth), or None
      for an all-zero placeholder (sampling only).
    vocab: the captions.pickle vocabulary of the text encoder.
    sources: provenance recorded in converted.json.

  Returns:
    The config as written.
  """
  from t2ijax.trainers import damsm as damsm_trainer  # pylint: disable=g-import-not-at-top
  from t2ijax.trainers import state as state_lib  # pylint: disable=g-import-not-at-top
  _check_empty(directory)
  text_vars, text_args = kinds.damsm_text_variables(text_state_dict, vocab)
  image_vars = None
  if image_state_dict is not None:
    image_vars, image_args = kinds.damsm_image_variables(image_state_dict)
    if image_args['nef'] != text_args['nef']:
      raise errors.CheckpointError(
          f'The image encoder has nef {image_args["nef"]} but the text '
          f'encoder {text_args["nef"]}: pass the two encoders of one DAMSM.')
  config.model.update(n_words=text_args['n_words'],
                      embedding_dim=text_args['embedding_dim'],
                      nef=text_args['nef'], backbone='inception_v3',
                      backbone_trainable=False)
  config.train.num_steps = _STEP

  method = damsm_trainer.DamsmMethod(config, vocab, config.train.batch_size)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(method.init_state, rng)
  nets = abstract.nets
  text_params = _matching('DAMSM text encoder', text_vars['params'],
                          nets['text'].params)
  if image_vars is None:
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                      tree)
    image_params = zeros(nets['image'].params)
    image_stats = zeros(nets['image'].collections['batch_stats'])
  else:
    image_params = _matching('DAMSM image encoder', image_vars['params'],
                             nets['image'].params)
    image_stats = _matching('DAMSM image encoder statistics',
                            image_vars['batch_stats'],
                            nets['image'].collections['batch_stats'])
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(rng),
      nets={'text': state_lib.new_net(text_params, method.txs['text']),
            'image': state_lib.new_net(
                image_params, method.txs['image'],
                collections={'batch_stats': image_stats})})
  # The trainer's init defines the layout; anything else would not restore.
  _matching('DAMSM state', state, abstract)
  _save(directory, config, state, vocab)
  _write_json(os.path.join(directory, CONVERTED_FILE), {
      'layout': 'workdir', 'format': FORMAT_VERSION, 'kind': 'damsm',
      'method': config.method, 'data_source': config.data.source,
      'image_encoder': image_vars is not None, 'settings': {},
      'sources': dict(sources)})
  logging.info('DAMSM workdir written: %s', directory)
  return config


# --- GAN workdir ----------------------------------------------------------------


def _data_settings(config) -> dict[str, str]:
  return {f'data.{field}': config.data[field]
          for field in ('manual_dir', 'data_dir') if config.data[field]}


def write_gan_workdir(
    directory: str, kind: str, config: ml_collections.ConfigDict,
    damsm_config: ml_collections.ConfigDict,
    netg_state_dict: Mapping[str, Any], text_state_dict: Mapping[str, Any],
    image_state_dict: Optional[Mapping[str, Any]], vocab: text.Vocab,
    sources: Mapping[str, Any]) -> dict[str, Any]:
  """Writes DIR (the GAN run) and DIR/damsm (its DAMSM) from official files.

  Args:
    directory: the GAN workdir to write (must be empty or absent).
    kind: 'attngan_netG', 'dmgan_netG' or 'dfgan_netG'.
    config: the GAN config (configs/attngan.py, dmgan.py or dfgan.py, any
      variant); its model widths must be the checkpoint's. damsm.workdir (and
      for AttnGAN / DM-GAN model.official_mask_bug) are set here.
    damsm_config: a configs/damsm.py config for DIR/damsm.
    netg_state_dict, text_state_dict, image_state_dict: the official state
      dicts (image may be None: sampling only). For DF-GAN, the loaded
      state_epoch_*.pth (its netD and netC become D0) or a bare netG.
    vocab: the captions.pickle vocabulary.
    sources: provenance recorded in converted.json.

  Returns:
    The converted.json content.
  """
  from t2ijax import registry  # pylint: disable=g-import-not-at-top
  if kind not in _NETG_FAMILY:
    raise errors.ConfigError(
        f'write_gan_workdir takes a netG kind {tuple(_NETG_FAMILY)}; got {kind!r}.')
  family = _NETG_FAMILY[kind]
  if config.method != family:
    raise errors.ConfigError(
        f'--kind={kind} needs a {family} config (configs/{family}.py:cub or '
        f':coco); got config.method={config.method!r}.')
  _check_empty(directory)
  g_vars, widths = kinds.convert(kind, netg_state_dict)
  widths.pop('family')
  _check_widths(config, widths, family)
  d_vars = None
  if family == 'dfgan':
    nets = torch_dfgan.split_checkpoint(netg_state_dict)
    if nets['netD'] is not None and nets['netC'] is not None:
      d_vars = torch_dfgan.discriminator_variables(
          nets['netD'], nets['netC'], widths['image_size'])
  # Checked before anything is written.
  _, text_args = kinds.damsm_text_variables(text_state_dict, vocab)
  if text_args['nef'] != widths['nef']:
    raise errors.CheckpointError(
        f'The netG takes nef={widths["nef"]} text features but the DAMSM text '
        f'encoder makes {text_args["nef"]}: pass the DAMSM the netG was '
        'trained with.')

  damsm_dir = os.path.join(os.path.abspath(directory), DAMSM_SUBDIR)
  damsm_config.data.source = config.data.source
  for field, value in _data_settings(config).items():
    damsm_config.data[field.split('.')[1]] = value
  write_damsm_workdir(damsm_dir, damsm_config, text_state_dict,
                      image_state_dict, vocab, sources)
  config.damsm.workdir = damsm_dir
  model_settings = {}
  if family != 'dfgan':
    # The released AttnGAN / DM-GAN weights were trained with the mask bug.
    config.model.official_mask_bug = True
    model_settings['model.official_mask_bug'] = True

  method = registry.method_class(config.method)(config, vocab,
                                                config.train.batch_size)
  state = _gan_state(method, g_vars, jax.random.key(config.seed), d_vars)
  _save(directory, config, state, vocab)
  info = {'layout': 'workdir', 'format': FORMAT_VERSION, 'kind': kind,
          'method': config.method, 'data_source': config.data.source,
          'image_encoder': image_state_dict is not None, 'generator': widths,
          'discriminator': d_vars is not None,
          'settings': {'damsm.workdir': DAMSM_SUBDIR, **model_settings,
                       **_data_settings(config)},
          'sources': dict(sources)}
  _write_json(os.path.join(directory, CONVERTED_FILE), info)
  logging.info('GAN workdir written: %s', directory)
  return info


def _gan_state(method, g_vars: Mapping[str, Any], rng: jax.Array,
               d_vars: Optional[Mapping[str, Any]] = None):
  """The GAN train state with the converted G, Ds (fresh unless `d_vars`
  gives the only D) and the DAMSM encoders.

  Assembled as the trainer's `init_state` lays it out, and checked against
  that layout, rather than produced by it: its init compiles G's
  initialisers and forward pass only for the result to be thrown away, and
  would compile the DAMSM weights in as constants.
  """
  from t2ijax.trainers import state as state_lib  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(method.init_state, rng)
  g = abstract.nets['G']
  params = _matching('netG', g_vars['params'], g.params)
  collections = {}
  if 'batch_stats' in g.collections:
    collections['batch_stats'] = _matching(
        'netG statistics', g_vars['batch_stats'], g.collections['batch_stats'])
  # The official AttnGAN / DM-GAN netG files hold the EMA weights: they are
  # both. DF-GAN keeps no EMA unless the config asks for one.
  nets = {'G': state_lib.new_net(params, method.txs['G'], collections=collections,
                                 ema=g.ema_params != ())}
  nef, batch = method.config.model.nef, 2

  def init_discriminators(key):
    keys = jax.random.split(key, len(method.sizes))
    # DF-GAN's D has no train flag (no BatchNorm, no dropout).
    extra = {} if method.config.method == 'dfgan' else {'train': False}
    return [d.init(k, jnp.zeros((batch, size, size, 3)),
                   jnp.zeros((batch, nef)), **extra)
            for k, size, d in zip(keys, method.sizes, method.discriminators)]

  d_key, state_key = jax.random.split(rng)
  # An 'rbg' key: its init compiles in about half the time of threefry's on
  # XLA:CPU, and a fresh D is as random either way.
  d_key = jax.random.key(jax.random.randint(d_key, (), 0, 2**31 - 1),
                         impl='rbg')
  if d_vars is not None:
    fresh = [{'params': _matching('netD and netC', d_vars['params'],
                                  abstract.nets['D0'].params)}]
  else:
    fresh = jax.jit(init_discriminators)(d_key)
  for i, variables in enumerate(fresh):
    nets[f'D{i}'] = state_lib.new_net(
        variables['params'], method.txs[f'D{i}'],
        collections={k: v for k, v in variables.items() if k != 'params'})
  damsm = method.damsm
  nets['text_encoder'] = state_lib.new_net(
      jax.tree.map(jnp.asarray, damsm.text_variables['params']), None)
  image_vars = jax.tree.map(jnp.asarray, damsm.image_variables)
  nets['image_encoder'] = state_lib.new_net(
      image_vars['params'], None,
      collections={k: v for k, v in image_vars.items() if k != 'params'})
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32),
                               rng=jax.random.key_data(state_key), nets=nets)
  _matching('GAN train state', state, abstract)
  return state


def _check_widths(config, widths: Mapping[str, int], family: str) -> None:
  """The config's generator must be the checkpoint's (nef comes from the DAMSM)."""
  model = config.model
  sizes = tuple(config.data.image_sizes)
  wrong = [f'model.{k}={model[k]} (checkpoint: {v})' for k, v in widths.items()
           if k not in ('nef', 'image_size') and model[k] != v]
  if family == 'dfgan':
    if sizes != (widths['image_size'],):
      wrong.append(f'data.image_sizes={sizes} (checkpoint: '
                   f'({widths["image_size"]},))')
  elif len(sizes) != widths['num_stages']:
    wrong.append(f'data.image_sizes={sizes} '
                 f'(checkpoint: {widths["num_stages"]} stages)')
  if wrong:
    raise errors.ConfigError(
        'The config does not describe this netG: ' + '; '.join(wrong)
        + '. Use the variant it was trained with (CUB: :cub, COCO: :coco) or '
        'override these fields, e.g. --config.model.r_num=3.')


# --- Running from a converted workdir -------------------------------------------


def read_info(workdir: str) -> Optional[dict[str, Any]]:
  """converted.json of a converted workdir, or None for any other directory."""
  path = os.path.join(workdir, CONVERTED_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    info = json.load(f)
  return info if info.get('layout') == 'workdir' else None


def apply_settings(config: ml_collections.ConfigDict, workdir: str,
                   mode: str) -> None:
  """Puts what a converted workdir's weights need into `config` (in place).

  No-op for a workdir that was not written by the converter. Sets
  damsm.workdir (unless given), model.official_mask_bug=True and the data
  location recorded at conversion (unless given).

  Raises:
    ConfigError: the config's method is not the workdir's, or eval/train on
      a workdir converted without the DAMSM image encoder.
  """
  info = read_info(workdir)
  if info is None:
    return
  if config.method != info['method']:
    raise errors.ConfigError(
        f'{workdir} holds a converted {info["kind"]} ({info["method"]}); run '
        f'it with --config=configs/{info["method"]}.py:VARIANT, not '
        f'{config.method!r}.')
  source = info.get('data_source')
  if source and config.data.source != source:
    raise errors.ConfigError(
        f'{workdir} was converted for data.source={source!r} (its vocabulary '
        f'is that data set\'s); the config has {config.data.source!r}: use the '
        f'matching variant, e.g. --config=configs/{info["method"]}.py:{source}.')
  if mode in ('eval', 'train') and not info['image_encoder']:
    raise errors.ConfigError(
        f'{workdir} was converted without the DAMSM image encoder, which '
        f'--mode={mode} needs: convert again with '
        '--image_encoder=PATH/image_encoder*.pth (only --mode=sample works '
        'without it).')
  applied = {}
  for dotted, value in info['settings'].items():
    section, field = dotted.split('.')
    if dotted == 'damsm.workdir':
      value = os.path.join(os.path.abspath(workdir), value)
    current = config[section][field]
    if dotted == 'model.official_mask_bug' or not current:
      if current != value:
        config[section][field] = value
        applied[dotted] = value
  if applied:
    logging.info('converted workdir %s: using %s', workdir, applied)
