"""What each `python -m t2ijax.convert --kind=...` converts, and its file format.

One function per kind turns a PyTorch state dict (for cub_inception: a TF
checkpoint's variables) into Flax variables, reusing the per-network
converters:

  kind                    source file                         Flax model
  fid_inception           pytorch-fid pt_inception-2015-12-05-6726825d.pth
                                                              InceptionV3('fid', 1008)
  torchvision_inception   inception_v3_google-*.pth           InceptionV3('torchvision')
  cub_inception           StackGAN-inception-model's TF       InceptionV3('tf_slim',
                          checkpoint prefix, e.g. birds_      51 (CUB) / 21 (flowers))
                          valid299/model.ckpt-5000
  damsm_text              DAMSM text_encoder*.pth             damsm.TextEncoder
  damsm_image             DAMSM image_encoder*.pth            damsm.ImageEncoder
  attngan_netG            AttnGAN netG / bird_AttnGAN2.pth    attngan.Generator
  dmgan_netG              DM-GAN netG / bird_DMGAN.pth        dmgan.Generator
  dfgan_netG              DF-GAN state_epoch_*.pth (or its    dfgan.NetG
                          netG state dict)

Stored format (every kind; the CLI uses it for all but the netG kinds, which
become runnable workdirs, see `t2ijax.convert.workdir`), a directory with:
  variables.msgpack  the variables {'params': ..., 'batch_stats': ...} as
                     nested dicts of float32 arrays, Flax msgpack
                     (flax.serialization); loads without torch. For
                     fid_inception it is what the evaluation reads:
                     --config.eval.inception_weights=DIR/variables.msgpack;
                     for cub_inception the directory itself is
                     --config.eval.is_classifier=DIR;
  converted.json     {"layout": "variables", "kind", "model": the keyword
                     arguments that rebuild the Flax module, "sources": file
                     name and sha256 of each input};
  vocab.json         the captions.pickle vocabulary (DAMSM kinds, when given).
Read it back with `load(directory)` -> (module, variables, info).
"""

import hashlib
import json
import os
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import flax.serialization
import jax
import numpy as np

from t2ijax import errors
from t2ijax.convert import tf_slim_inception
from t2ijax.convert import torch_attngan
from t2ijax.convert import torch_damsm
from t2ijax.convert import torch_dfgan
from t2ijax.convert import torch_inception
from t2ijax.data import text

INCEPTION_KINDS = ('fid_inception', 'torchvision_inception', 'cub_inception')
DAMSM_KINDS = ('damsm_text', 'damsm_image')
NETG_KINDS = ('attngan_netG', 'dmgan_netG', 'dfgan_netG')
KINDS = INCEPTION_KINDS + DAMSM_KINDS + NETG_KINDS

VARIABLES_FILE = 'variables.msgpack'
INFO_FILE = 'converted.json'
VOCAB_FILE = 'vocab.json'
FORMAT_VERSION = 1


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise errors.ConfigError(f'Unknown kind {kind!r}; use one of {KINDS}.')


# --- One function per kind: state dict -> (variables, model arguments) ---------


def fid_inception_variables(state_dict: Mapping[str, Any]):
  """pytorch-fid's FID Inception (with its 1008-way fc) -> InceptionV3('fid')."""
  variables = torch_inception.inception_variables_from_state_dict(
      state_dict, 'fid')
  return variables, {'flavor': 'fid', 'num_classes': _num_classes(variables)}


def torchvision_inception_variables(state_dict: Mapping[str, Any],
                                    num_classes: Any = torch_inception.INFER):
  """torchvision's ImageNet Inception-v3 -> InceptionV3('torchvision')."""
  variables = torch_inception.inception_variables_from_state_dict(
      state_dict, 'torchvision', num_classes=num_classes)
  return variables, {'flavor': 'torchvision',
                     'num_classes': _num_classes(variables)}


def cub_inception_variables(checkpoint: Mapping[str, Any],
                            num_classes: Any = tf_slim_inception.INFER):
  """StackGAN's TF-slim IS classifier (EMA weights) -> InceptionV3('tf_slim').

  num_classes counts the classes without the background class 0 (50 CUB, 20
  flowers; 'infer' reads it from the checkpoint); the model has one more.
  """
  variables, _ = tf_slim_inception.variables_from_checkpoint(
      checkpoint, num_classes)
  return variables, {'flavor': tf_slim_inception.FLAVOR,
                     'num_classes': _num_classes(variables)}


def _num_classes(variables) -> Optional[int]:
  fc = variables['params'].get('fc')
  return None if fc is None else int(fc['kernel'].shape[1])


def damsm_text_variables(state_dict: Mapping[str, Any],
                         vocab: Optional[text.Vocab] = None):
  """RNN_ENCODER -> TextEncoder; checks n_words against the vocabulary."""
  variables = torch_damsm.text_encoder_variables_from_state_dict(
      torch_attngan.strip_state_dict(state_dict))
  params = variables['params']
  n_words, embedding_dim = params['encoder']['embedding'].shape
  if vocab is not None and len(vocab) != n_words:
    raise errors.CheckpointError(
        f'The text encoder embeds {n_words} words but the captions pickle has '
        f'{len(vocab)}: pass the captions.pickle of the data set the encoder '
        'was trained on (CUB 5450 words, COCO 27297).')
  nef = 2 * params['rnn_fwd']['cell']['hi']['kernel'].shape[0]
  return variables, {'n_words': int(n_words),
                     'embedding_dim': int(embedding_dim), 'nef': int(nef)}


def damsm_image_variables(state_dict: Mapping[str, Any]):
  """CNN_ENCODER (Inception-v3 + heads, BN statistics included) -> ImageEncoder."""
  variables = torch_damsm.image_encoder_variables_from_state_dict(
      torch_attngan.strip_state_dict(state_dict))
  nef = variables['params']['emb_cnn_code']['kernel'].shape[1]
  return variables, {'nef': int(nef), 'backbone': 'inception_v3'}


def _netg_variables(state_dict: Mapping[str, Any], family: str):
  variables = torch_attngan.generator_variables_from_state_dict(
      state_dict, family)
  widths = torch_attngan.generator_topology(state_dict)
  widths['family'] = family
  return variables, widths


def attngan_netg_variables(state_dict: Mapping[str, Any]):
  """AttnGAN netG -> attngan.Generator (official_mask_bug on when rebuilt)."""
  return _netg_variables(state_dict, 'attngan')


def dmgan_netg_variables(state_dict: Mapping[str, Any]):
  """DM-GAN netG -> dmgan.Generator (official_mask_bug on when rebuilt)."""
  return _netg_variables(state_dict, 'dmgan')


def dfgan_netg_variables(checkpoint: Mapping[str, Any]):
  """DF-GAN NetG (from a state_epoch_*.pth dict or a bare netG) -> dfgan.NetG."""
  netg = torch_dfgan.split_checkpoint(checkpoint)['netG']
  widths = torch_dfgan.generator_topology(netg)
  variables = torch_dfgan.generator_variables(netg, widths)
  return variables, dict(widths, family='dfgan')


_CONVERTERS = {
    'fid_inception': fid_inception_variables,
    'torchvision_inception': torchvision_inception_variables,
    'cub_inception': cub_inception_variables,
    'damsm_text': damsm_text_variables,
    'damsm_image': damsm_image_variables,
    'attngan_netG': attngan_netg_variables,
    'dmgan_netG': dmgan_netg_variables,
    'dfgan_netG': dfgan_netg_variables,
}


def convert(kind: str, state_dict: Mapping[str, Any], **options):
  """(variables, model arguments) of `kind` from a state dict.

  Options: `vocab` (damsm_text), `num_classes` (torchvision_inception,
  cub_inception).
  """
  _check_kind(kind)
  return _CONVERTERS[kind](state_dict, **options)


def build_model(kind: str, model_args: Mapping[str, Any]) -> nn.Module:
  """The Flax module that `kind`'s variables belong to."""
  _check_kind(kind)
  args = dict(model_args)
  if kind in INCEPTION_KINDS:
    from t2ijax.encoders import inception  # pylint: disable=g-import-not-at-top
    return inception.InceptionV3(**args)
  from t2ijax.encoders import damsm  # pylint: disable=g-import-not-at-top
  if kind == 'damsm_text':
    return damsm.TextEncoder(**args)
  if kind == 'damsm_image':
    return damsm.ImageEncoder(**args)
  family = args.pop('family')
  if family == 'dfgan':
    from t2ijax.models import dfgan  # pylint: disable=g-import-not-at-top
    args.pop('nef')   # the sentence size is the input's, not a module field
    return dfgan.NetG(**args)
  return torch_attngan.build_generator(family, official_mask_bug=True, **args)


def read_vocab(captions_pickle: str) -> text.Vocab:
  """The vocabulary of an official captions.pickle."""
  if not os.path.isfile(captions_pickle):
    raise errors.DataLayoutError(
        f'No captions pickle at {captions_pickle}; pass the data set\'s '
        'captions.pickle (it holds the vocabulary the DAMSM text encoder was '
        'trained with).')
  return text.read_captions_pickle(captions_pickle)[2]


def convert_file(kind: str, src: str, dst: str,
                 captions: Optional[str] = None,
                 num_classes: Any = 'infer') -> str:
  """One .pth -> `dst` in the stored format below; returns variables' path.

  Args:
    kind: one of KINDS.
    src: the PyTorch checkpoint; for cub_inception the TF checkpoint prefix
      (model.ckpt-5000).
    dst: output directory; must be empty or absent.
    captions: captions.pickle: required for damsm_text (its ids), stored
      beside damsm_image when given.
    num_classes: torchvision_inception's classifier: 'infer', None or an int;
      cub_inception's classes without the background: 'infer' or an int.
  """
  _check_kind(kind)
  if os.path.isdir(dst) and os.listdir(dst):
    raise errors.ConfigError(f'{dst} is not empty; choose a new --dst.')
  vocab = read_vocab(captions) if captions else None
  options = {}
  if kind == 'damsm_text':
    if vocab is None:
      raise errors.ConfigError(
          'damsm_text needs --captions=captions.pickle: the encoder is '
          'useless without the vocabulary its word ids belong to.')
    options['vocab'] = vocab
  elif kind in ('torchvision_inception', 'cub_inception'):
    options['num_classes'] = num_classes
  if kind == 'cub_inception':
    if num_classes is None:
      raise errors.ConfigError(
          'cub_inception is a classifier: give --num_classes as its number '
          'of classes (50 CUB, 20 flowers) or leave it to infer.')
    prefix = tf_slim_inception.checkpoint_prefix(src)
    variables, model_args = convert(
        kind, tf_slim_inception.read_checkpoint(prefix), **options)
    sources = {'src': [file_digest(path) for path in
                       tf_slim_inception.checkpoint_files(prefix)]}
    return save(dst, kind, variables, model_args, sources)
  source = (torch_dfgan.load_checkpoint(src) if kind == 'dfgan_netG'
            else torch_inception.load_state_dict(src))
  variables, model_args = convert(kind, source, **options)
  sources = {'src': file_digest(src)}
  if captions:
    sources['captions'] = file_digest(captions)
  return save(dst, kind, variables, model_args, sources, vocab)


# --- Stored format ---------------------------------------------------------------


def file_digest(path: str) -> dict[str, str]:
  """{'file': base name, 'sha256': hex digest} of a source file."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return {'file': os.path.basename(path), 'sha256': digest.hexdigest()}


def save(directory: str, kind: str, variables: Mapping[str, Any],
         model_args: Mapping[str, Any], sources: Mapping[str, Any],
         vocab: Optional[text.Vocab] = None) -> str:
  """Writes variables.msgpack, converted.json (and vocab.json) into `directory`."""
  _check_kind(kind)
  os.makedirs(directory, exist_ok=True)
  host = jax.tree.map(lambda x: np.asarray(x, np.float32),
                      flax.core.unfreeze(variables))
  path = os.path.join(directory, VARIABLES_FILE)
  with open(path + '.tmp', 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(host))
  os.replace(path + '.tmp', path)  # never a half-written file under the name
  info = {'layout': 'variables', 'format': FORMAT_VERSION, 'kind': kind,
          'model': dict(model_args), 'sources': dict(sources),
          'vocab': VOCAB_FILE if vocab is not None else None}
  with open(os.path.join(directory, INFO_FILE), 'w') as f:
    json.dump(info, f, indent=2)
  if vocab is not None:
    with open(os.path.join(directory, VOCAB_FILE), 'w') as f:
      f.write(vocab.to_json())
  return path


def load_variables(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables as nested NumPy dicts, the converted.json info) of `directory`."""
  info_path = os.path.join(directory, INFO_FILE)
  variables_path = os.path.join(directory, VARIABLES_FILE)
  if not (os.path.isfile(info_path) and os.path.isfile(variables_path)):
    raise errors.CheckpointError(
        f'{directory} holds no converted variables ({INFO_FILE} and '
        f'{VARIABLES_FILE}); write them with python -m t2ijax.convert '
        '--kind=KIND --src=FILE.pth --dst=DIR.')
  with open(info_path) as f:
    info = json.load(f)
  if info.get('layout') != 'variables':
    raise errors.CheckpointError(
        f'{directory} is a converted workdir, not a variables directory: use '
        'it as --workdir of python -m t2ijax.main.')
  if info.get('format') != FORMAT_VERSION:
    raise errors.CheckpointError(
        f'{info_path} has format {info.get("format")!r}; this code reads '
        f'format {FORMAT_VERSION}. Convert the source file again.')
  with open(variables_path, 'rb') as f:
    variables = flax.serialization.msgpack_restore(f.read())
  return variables, info


def load(directory: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
  """(Flax module, variables, info) of a directory written by `save`.

  Example: `model, variables, _ = load('converted/fid_inception')`, then
  `model.apply(variables, fid_preprocess(images))['pool3']`.
  """
  variables, info = load_variables(directory)
  model = build_model(info['kind'], info['model'])
  return model, variables, info


def load_vocab(directory: str) -> Optional[text.Vocab]:
  """The vocabulary saved beside converted DAMSM variables, or None."""
  path = os.path.join(directory, VOCAB_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return text.Vocab.from_json(f.read())
