"""DAMSM pretraining: AttnGAN's BiLSTM text encoder and CNN image encoder.

Loss = word-level (w0 + w1) + sentence-level (s0 + s1) matching losses with
gamma 4/5/10 and same-class masking (reference/attngan_family.md §2.4). Optimizer
as the official recipe: Adam(0.5, 0.999) on the text encoder (grad-norm clip 0.25)
and on the image encoder's trainable part, a new Adam every epoch, lr decayed by
0.98 per epoch until it falls below a tenth of its start.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from t2ijax import errors
from t2ijax import images as images_lib
from t2ijax.encoders import damsm as damsm_enc
from t2ijax.losses import damsm as damsm_loss
from t2ijax.trainers import method as method_lib
from t2ijax.trainers import state as state_lib


def learning_rate(step: jax.Array, steps_per_epoch: int, optim) -> jax.Array:
  """lr of the epoch `step` belongs to: lr0 * decay^min(epoch, first epoch below the floor)."""
  epoch = step // steps_per_epoch
  if optim.lr_decay_per_epoch >= 1.0:
    return jnp.asarray(optim.lr, jnp.float32)
  # The official loop multiplies while lr > lr0 * min_factor, so the last
  # multiplication takes lr just below that floor and it stays there.
  last = math.ceil(math.log(optim.min_lr_factor) / math.log(optim.lr_decay_per_epoch))
  return optim.lr * jnp.power(optim.lr_decay_per_epoch,
                              jnp.minimum(epoch, last).astype(jnp.float32))


def build_encoders(config):
  m = config.model
  text = damsm_enc.TextEncoder(
      n_words=m.n_words, embedding_dim=m.embedding_dim, nef=m.nef,
      dropout_rate=m.text_dropout)
  image = damsm_enc.ImageEncoder(
      nef=m.nef, backbone=m.backbone, backbone_trainable=m.backbone_trainable,
      backbone_bn_train=m.backbone_bn_train, tiny_width=m.tiny_width)
  return text, image


class DamsmMethod(method_lib.Method):
  """Trains `text` and `image` networks; both are frozen encoders for the GANs."""

  def __init__(self, config, vocab, num_train_examples):
    super().__init__(config, vocab, num_train_examples)
    self.text_encoder, self.image_encoder = build_encoders(config)
    self.size = max(config.data.image_sizes)
    self.steps_per_epoch = max(num_train_examples // config.train.batch_size, 1)
    o = config.optim
    self.txs = {
        "text": optax.chain(optax.clip_by_global_norm(o.text_grad_clip),
                            optax.scale_by_adam(o.b1, o.b2)),
        "image": optax.multi_transform(
            {"train": optax.scale_by_adam(o.b1, o.b2), "frozen": optax.set_to_zero()},
            self._image_param_labels),
    }

  def _image_param_labels(self, params):
    frozen = not self.config.model.backbone_trainable
    return {k: jax.tree.map(lambda _: "frozen" if (frozen and k == "backbone") else "train", v)
            for k, v in params.items()}

  # ---- init ----
  def init_state(self, rng):
    k_text, k_image, k_state = jax.random.split(rng, 3)
    t = self.config.data.max_words
    ids = jnp.ones((2, t), jnp.int32)
    text_vars = self.text_encoder.init(k_text, ids, jnp.full((2,), t), deterministic=True)
    images = jnp.zeros((2, self.size, self.size, 3), jnp.float32)
    image_vars = self.image_encoder.init(k_image, images, train=False)
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(k_state),
        nets={
            "text": state_lib.new_net(text_vars["params"], self.txs["text"]),
            "image": state_lib.new_net(
                image_vars["params"], self.txs["image"],
                collections={"batch_stats": image_vars["batch_stats"]}),
        })

  def load_pretrained(self, state):
    """Inception-v3 weights from torchvision, or a whole official image_encoder*.pth."""
    m = self.config.model
    path = m.inception_weights
    if m.backbone != "inception_v3":
      return state
    if not path:
      if m.backbone_trainable:
        return state
      raise errors.ConfigError(
          "model.backbone=inception_v3 is frozen, so it needs ImageNet weights: set "
          "--config.model.inception_weights=PATH/inception_v3_google-*.pth (torchvision) "
          "or a DAMSM image_encoder*.pth; or set --config.model.backbone_trainable=True")
    from t2ijax.convert import torch_damsm, torch_inception
    state_dict = torch_inception.load_state_dict(path)
    if "emb_features.weight" in state_dict:      # an official DAMSM image encoder
      variables = torch_damsm.image_encoder_variables_from_state_dict(state_dict)
      params, stats = variables["params"], variables["batch_stats"]
    else:                                        # torchvision's ImageNet Inception-v3
      variables = torch_inception.inception_variables_from_state_dict(state_dict, "torchvision")
      params = {"backbone": {k: v for k, v in variables["params"].items() if k != "fc"}}
      stats = {"backbone": variables["batch_stats"]}
    image = state.nets["image"]
    put = lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding)
    merged_params = dict(image.params)
    merged_stats = dict(image.collections["batch_stats"])
    for name in params:
      merged_params[name] = jax.tree.map(put, params[name], image.params[name])
    for name in stats:
      merged_stats[name] = jax.tree.map(put, stats[name], merged_stats[name])
    logging.info("loaded image-encoder weights (%s) from %s", sorted(params), path)
    image = image.replace(params=merged_params, collections={"batch_stats": merged_stats})
    return state.replace(nets={**state.nets, "image": image})

  # ---- losses ----
  def _encode(self, params_text, params_image, collections, batch, key, train):
    images = batch[f"image{self.size}"].astype(jnp.float32) / 127.5 - 1.0
    text = self.text_encoder.apply(
        {"params": params_text}, batch["caption"], batch["caption_len"],
        deterministic=not train, rngs={"dropout": key} if train else None)
    variables = {"params": params_image, **collections}
    if train:
      image, collections = self.image_encoder.apply(
          variables, images, train=True, mutable=["batch_stats"])
    else:
      image = self.image_encoder.apply(variables, images, train=False)
    return text["words"], text["sentence"], image["local"], image["global"], collections

  def _losses(self, words, sentence, local, glob, batch):
    g = self.config.damsm
    w0, w1, _ = damsm_loss.words_loss(words, batch["caption_len"], local, batch["class_id"],
                                      g.gamma1, g.gamma2, g.gamma3)
    s0, s1 = damsm_loss.sentence_loss(glob, sentence, batch["class_id"], g.gamma3)
    return {"w_loss0": w0, "w_loss1": w1, "s_loss0": s0, "s_loss1": s1,
            "loss": w0 + w1 + s0 + s1}

  # ---- step ----
  def train_step(self, state, batch):
    key = state.step_key()
    text, image = state.nets["text"], state.nets["image"]

    def loss_fn(params_text, params_image):
      words, sentence, local, glob, stats = self._encode(
          params_text, params_image, image.collections, batch, key, train=True)
      losses = self._losses(words, sentence, local, glob, batch)
      return losses["loss"], (losses, stats)

    (_, (losses, stats)), (g_text, g_image) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(text.params, image.params)

    if self.config.optim.reset_each_epoch:
      # A new Adam every epoch, as the official loop builds one per epoch.
      new_epoch = (state.step % self.steps_per_epoch) == 0
      reset = lambda net, tx: net.replace(opt_state=jax.lax.cond(
          new_epoch, lambda: tx.init(net.params), lambda: net.opt_state))
      text, image = reset(text, self.txs["text"]), reset(image, self.txs["image"])
    lr = learning_rate(state.step, self.steps_per_epoch, self.config.optim)
    text = state_lib.apply_updates(text, g_text, self.txs["text"], learning_rate=lr)
    image = state_lib.apply_updates(image, g_image, self.txs["image"], collections=stats,
                                    learning_rate=lr)
    metrics = dict(losses, lr=lr, text_grad_norm=optax.global_norm(g_text))
    return state.replace(step=state.step + 1, nets={"text": text, "image": image}), metrics

  # ---- evaluation: matching losses and retrieval among the batch ----
  def eval_step(self, state, batch):
    text, image = state.nets["text"], state.nets["image"]
    words, sentence, local, glob, _ = self._encode(
        text.params, image.params, image.collections, batch, None, train=False)
    out = self._losses(words, sentence, local, glob, batch)
    top1 = damsm_loss.retrieval_top1(glob, sentence)
    out.update(image_to_text_top1=top1["image_to_text"],
               text_to_image_top1=top1["text_to_image"])
    return out

  def summarize_eval(self, outputs):
    result = {k: float(np.mean([o[k] for o in outputs])) for k in outputs[0]}
    result["chance_top1"] = 1.0 / self.config.eval.batch_size
    return result

  # ---- pictures: each image beside its word-attention maps ----
  def sample_grid(self, state, batch):
    n, words_shown = min(self.config.log.num_samples, batch["caption"].shape[0]), 6
    text, image = state.nets["text"], state.nets["image"]
    small = jax.tree.map(lambda x: x[:n], dict(batch))
    words, _, local, _, _ = self._encode(text.params, image.params, image.collections,
                                         small, None, train=False)
    b, h, w, d = local.shape
    real_words = jnp.arange(words.shape[1])[None, :] < small["caption_len"][:, None]
    _, attn = damsm_loss.word_region_attention(
        words, local.reshape(b, h * w, d), self.config.damsm.gamma1, real_words)
    attn = np.asarray(jax.device_get(attn)).reshape(b, -1, h, w)[:, :words_shown]
    pics = np.asarray(jax.device_get(small[f"image{self.size}"]))
    rows = []
    for i in range(n):
      rows.append(pics[i])
      for j in range(words_shown):
        rows.append(_heat_overlay(pics[i], attn[i, j] if j < small["caption_len"][i] else None))
    return images_lib.grid(np.stack(rows), ncols=1 + words_shown)


def _heat_overlay(picture: np.ndarray, attn: np.ndarray | None) -> np.ndarray:
  """The picture darkened where a word does not attend (black tile for padding)."""
  if attn is None:
    return np.zeros_like(picture)
  size = picture.shape[0]
  a = np.asarray(attn, np.float32)
  a = (a - a.min()) / max(a.max() - a.min(), 1e-8)
  reps = -(-size // a.shape[0])
  a = np.kron(a, np.ones((reps, reps), np.float32))[:size, :size]
  return (picture.astype(np.float32) * (0.15 + 0.85 * a[..., None])).astype(np.uint8)
