"""Method name (config.method) -> its Method class, imported lazily."""

import importlib

from t2ijax import errors

METHODS = {
    "damsm": "t2ijax.trainers.damsm:DamsmMethod",
    "attngan": "t2ijax.trainers.attngan:AttnGan",
    "dmgan": "t2ijax.trainers.attngan:DmGan",
    "dfgan": "t2ijax.trainers.dfgan:DfGan",
    "sdgan": "t2ijax.trainers.sdgan:SdGan",
    "mirrorgan": "t2ijax.trainers.mirrorgan:MirrorGan",
    "stream": "t2ijax.trainers.stream:StreamMethod",
    "char_cnn_rnn": "t2ijax.trainers.char_cnn_rnn:CharCnnRnnMethod",
    "gan_int_cls": "t2ijax.trainers.gan_int_cls:GanIntCls",
    "stackgan": "t2ijax.trainers.stackgan:StackGan",
    "stackganpp": "t2ijax.trainers.stackganpp:StackGanPP",
    "pixelcnn": "t2ijax.trainers.pixelcnn:PixelCnn",
}


def method_class(name: str):
  if name not in METHODS:
    raise errors.ConfigError(f"config.method={name!r} is not one of {sorted(METHODS)}")
  module, cls = METHODS[name].split(":")
  return getattr(importlib.import_module(module), cls)
