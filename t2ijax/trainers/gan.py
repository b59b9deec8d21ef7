"""The shared multi-stage text-to-image GAN trainer (AttnGAN family and after).

Per iteration (reference/attngan_family.md §3.5):
  1. frozen text encoder -> words, sentence (and the mismatched caption's sentence);
  2. G forward once in train mode -> an image per stage, CA mu/logvar;
  3. each stage's D takes one Adam step on
       (uncond_real + cond_real) / 2 + (uncond_fake + cond_fake + cond_wrong) / 3
     (BCE on logits; fakes detached);
  4. G takes one Adam step on the adversarial terms of all stages against the
     *updated* Ds, plus the method's extra losses (DAMSM for AttnGAN/DM-GAN) and KL;
  5. EMA of G's parameters (0.999), used for samples and evaluation.
G's forward runs once: its VJP is kept from step 2 and pulled back in step 4.

Families plug in through small hooks: `make_generator`, `make_discriminator`,
`discriminator_loss`, `generator_extra_losses`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from t2ijax import errors
from t2ijax import images as images_lib
from t2ijax import precision
from t2ijax.encoders import damsm_loader
from t2ijax.losses import damsm as damsm_loss
from t2ijax.trainers import method as method_lib
from t2ijax.trainers import state as state_lib


def bce(logits: jax.Array, label: float) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)).mean()


def kl_loss(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, sigma) || N(0, 1)), mean over batch and dimensions, as officially."""
  return -0.5 * jnp.mean(1.0 + logvar - mu ** 2 - jnp.exp(logvar))


def pretrain_if_missing(config, pretrain, run_dir: str, what: str) -> None:
  """Trains `pretrain` (a dependency's config) into run_dir unless a finished run is there.

  The dependency reads the same prepared data (data_dir) over the same mesh.
  `damsm_loader.finished` only reads config.json and the checkpoint steps, so it
  serves any run (DAMSM, STREAM).
  """
  if damsm_loader.finished(run_dir):
    return
  from t2ijax.trainers import loop
  pretrain = pretrain.copy_and_resolve_references()
  pretrain.data.data_dir = config.data.data_dir
  pretrain.mesh = config.mesh
  logging.info("pretraining %s into %s first", what, run_dir)
  loop.train_and_evaluate(pretrain, run_dir)


def apply_train(module, variables, *args, method=None, **kwargs):
  """Train-mode apply; returns (out, the updated non-param collections)."""
  return _apply(module, variables, *args, method=method, train=True, **kwargs)


def _apply(module, variables, *args, method=None, compute_dtype="float32", **kwargs):
  """Applies with every non-param collection mutable; returns (out, collections).

  compute_dtype: see `t2ijax.precision` (outputs are float32 either way).
  """
  mutable = [k for k in variables if k != "params"]
  if not mutable:
    return precision.apply(module, variables, *args, method=method,
                           compute_dtype=compute_dtype, **kwargs), {}
  return precision.apply(module, variables, *args, method=method, mutable=mutable,
                         compute_dtype=compute_dtype, **kwargs)


class TextToImageGan(method_lib.Method):
  """Multi-stage GAN conditioned on a frozen DAMSM's word and sentence features."""
  compute_dtype = "float32"   # config.precision's, set in __init__

  def __init__(self, config, vocab, num_train_examples):
    super().__init__(config, vocab, num_train_examples)
    self.sizes = sorted(config.data.image_sizes)
    if config.model.num_stages != len(self.sizes):
      raise errors.ConfigError(
          f"model.num_stages={config.model.num_stages} but data.image_sizes={self.sizes}: "
          "give one image size per generator stage (64, 128, 256)")
    self.damsm = damsm_loader.load(config.damsm.workdir, vocab)
    damsm_nef = self.damsm.config.model.nef
    if config.model.nef < 0:
      config.model.nef = damsm_nef
    elif config.model.nef != damsm_nef:
      raise errors.ConfigError(
          f"model.nef={config.model.nef} but the DAMSM in {config.damsm.workdir} has "
          f"nef={damsm_nef}; leave model.nef at -1 to take the DAMSM's")
    self.generator = self.make_generator()
    self.discriminators = [self.make_discriminator(size) for size in self.sizes]
    # G and D compute in this dtype where a family allows it (`compute_dtypes`).
    self.compute_dtype = precision.config_dtype(config)
    o = config.optim
    self.txs = {"G": optax.adam(o.g_lr, o.b1, o.b2)}
    for i in range(len(self.sizes)):
      self.txs[f"D{i}"] = optax.adam(o.d_lr, o.b1, o.b2)

  @classmethod
  def prepare_run(cls, config, workdir: str) -> None:
    """Finds (or, in the demos, first trains) the DAMSM this GAN is conditioned on."""
    if config.damsm.workdir:
      return
    if not config.damsm.pretrain:
      raise errors.ConfigError(
          f"{config.method} needs a pretrained DAMSM: train one with "
          "python -m t2ijax.main --config=configs/damsm.py:VARIANT --workdir=DAMSM_DIR, then "
          "pass --config.damsm.workdir=DAMSM_DIR")
    config.damsm.workdir = os.path.join(workdir, "damsm")
    pretrain_if_missing(config, config.damsm.pretrain, config.damsm.workdir, "a DAMSM")

  # ---- family hooks ----
  def _train_apply(self, module, variables, *args, method=None, **kwargs):
    """`apply_train` in the method's compute dtype: (float32 out, collections)."""
    return apply_train(module, variables, *args, method=method,
                       compute_dtype=self.compute_dtype, **kwargs)

  def make_generator(self):
    raise NotImplementedError

  def make_discriminator(self, image_size: int):
    raise NotImplementedError

  # ---- init ----
  def init_state(self, rng):
    keys = jax.random.split(rng, 3 + len(self.sizes))
    b, t, m = 2, self.config.data.max_words, self.config.model
    words = jnp.zeros((b, t, m.nef))
    sentence = jnp.zeros((b, m.nef))
    mask = jnp.ones((b, t), bool)
    g_vars = self.generator.init(keys[0], jnp.zeros((b, m.z_dim)), sentence, words, mask,
                                 ca_key=keys[1], train=False)
    nets = {"G": state_lib.new_net(g_vars["params"], self.txs["G"],
                                   collections=collections_of(g_vars), ema=True)}
    for i, (size, d) in enumerate(zip(self.sizes, self.discriminators)):
      d_vars = d.init(keys[3 + i], jnp.zeros((b, size, size, 3)), sentence, train=False)
      nets[f"D{i}"] = state_lib.new_net(d_vars["params"], self.txs[f"D{i}"],
                                        collections=collections_of(d_vars))
    # The frozen encoders travel in the state (and checkpoints); weights come
    # from the DAMSM run in load_pretrained.
    nets["text_encoder"] = state_lib.new_net(
        jax.tree.map(jnp.asarray, self.damsm.text_variables["params"]), None)
    image_vars = jax.tree.map(jnp.asarray, self.damsm.image_variables)
    nets["image_encoder"] = state_lib.new_net(image_vars["params"], None,
                                              collections=collections_of(image_vars))
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32),
                                rng=jax.random.key_data(keys[2]), nets=nets)

  # ---- shared pieces ----
  def encode_text(self, state, ids, lengths):
    out = self.damsm.text_encoder.apply(state.nets["text_encoder"].variables(), ids, lengths,
                                        deterministic=True)
    mask = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
    return out["words"], out["sentence"], mask

  def real_images(self, batch):
    return [batch[f"image{s}"].astype(jnp.float32) / 127.5 - 1.0 for s in self.sizes]

  def generate(self, g_net, params, z, sentence, words, mask, key, train):
    variables = g_net.variables(params)
    dtype = self.compute_dtype
    if train:
      return _apply(self.generator, variables, z, sentence, words, mask, ca_key=key, train=True,
                    compute_dtype=dtype)
    return precision.apply(self.generator, variables, z, sentence, words, mask, ca_key=key,
                           train=False, compute_dtype=dtype), {}

  def step_context(self, batch) -> tuple[dict, dict]:
    """(values the family's loss hooks share, metrics), computed once per step.

    E.g. SD-GAN's Siamese pairs of the batch; none for AttnGAN.
    """
    del batch
    return {}, {}

  def discriminator_extra_loss(self, index, real_out, context):
    """A family's extra D term on D's outputs for the real images: (loss, metrics)."""
    del index, real_out, context
    return 0.0, {}

  def generator_extra_terms(self, index, fake_out, context) -> dict:
    """A family's extra G terms on D's outputs for the fakes, by metric name."""
    del index, fake_out, context
    return {}

  def discriminator_loss(self, index, params, collections, real, fake, sentence,
                         wrong_sentence, context=None):
    """AttnGAN's D objective for one stage (+ the family's extra term);
    returns (loss, (metrics, collections))."""
    d, dtype = self.discriminators[index], self.compute_dtype
    variables = {"params": params, **collections}
    out_real, collections = _apply(d, variables, real, sentence, train=True, compute_dtype=dtype)
    variables = {"params": params, **collections}
    out_fake, collections = _apply(d, variables, fake, sentence, train=True, compute_dtype=dtype)
    variables = {"params": params, **collections}
    wrong, collections = _apply(d, variables, out_real["features"], wrong_sentence,
                                method=d.cond_logits, train=True, compute_dtype=dtype)
    cond_real, cond_fake, cond_wrong = bce(out_real["cond"], 1), bce(out_fake["cond"], 0), bce(wrong, 0)
    if "uncond" in out_real:
      real_loss, fake_loss = bce(out_real["uncond"], 1), bce(out_fake["uncond"], 0)
      loss = (real_loss + cond_real) / 2 + (fake_loss + cond_fake + cond_wrong) / 3
    else:
      loss = cond_real + (cond_fake + cond_wrong) / 2
    extra, extra_metrics = self.discriminator_extra_loss(index, out_real, context or {})
    loss = loss + extra
    return loss, ({f"D{index}_loss": loss, f"D{index}_real": cond_real,
                   f"D{index}_wrong": cond_wrong, **extra_metrics}, collections)

  def generator_adversarial(self, index, params, collections, fake, sentence, context=None):
    """G's terms of one stage against D, by metric name (G{i}_adv and the
    family's extra terms); returns (terms, collections)."""
    d = self.discriminators[index]
    out, collections = _apply(d, {"params": params, **collections}, fake, sentence, train=True,
                              compute_dtype=self.compute_dtype)
    loss = bce(out["cond"], 1) + (bce(out["uncond"], 1) if "uncond" in out else 0.0)
    terms = {f"G{index}_adv": loss, **self.generator_extra_terms(index, out, context or {})}
    return terms, collections

  def generator_extra_losses(self, state, fakes, words, sentence, lengths, batch):
    """DAMSM word and sentence losses of the final image, weighted by lambda."""
    d = self.damsm
    image = fakes[-1]
    if d.config.model.backbone != "inception_v3" and image.shape[1] != d.image_size:
      # The demo DAMSM's small CNN was trained at its own size (Inception resizes itself).
      image = jax.image.resize(image, (image.shape[0], d.image_size, d.image_size, 3), "linear")
    enc = d.image_encoder.apply(state.nets["image_encoder"].variables(), image, train=False)
    g = d.config.damsm
    w0, w1, _ = damsm_loss.words_loss(words, lengths, enc["local"], batch["class_id"],
                                      g.gamma1, g.gamma2, g.gamma3)
    s0, s1 = damsm_loss.sentence_loss(enc["global"], sentence, batch["class_id"], g.gamma3)
    lam = self.config.loss.damsm_lambda
    return {"damsm_words": lam * (w0 + w1), "damsm_sentence": lam * (s0 + s1)}

  # ---- the step ----
  def train_step(self, state, batch):
    key = state.step_key()
    k_z, k_ca = jax.random.split(key)
    words, sentence, mask = self.encode_text(state, batch["caption"], batch["caption_len"])
    _, wrong_sentence, _ = self.encode_text(state, batch["wrong_caption"],
                                            batch["wrong_caption_len"])
    z = jax.random.normal(k_z, (sentence.shape[0], self.config.model.z_dim))
    g = state.nets["G"]
    context, metrics = self.step_context(batch)

    def generator(params):
      out, collections = self.generate(g, params, z, sentence, words, mask, k_ca, train=True)
      return (out["images"], out["mu"], out["logvar"]), collections

    (fakes, mu, logvar), pull_back, g_collections = jax.vjp(generator, g.params, has_aux=True)
    reals = self.real_images(batch)
    nets, metrics = dict(state.nets), dict(metrics)
    for i in range(len(self.sizes)):
      name = f"D{i}"
      d = nets[name]
      grad_fn = jax.grad(self.discriminator_loss, argnums=1, has_aux=True)
      grads, (d_metrics, d_collections) = grad_fn(
          i, d.params, d.collections, reals[i], jax.lax.stop_gradient(fakes[i]), sentence,
          wrong_sentence, context)
      nets[name] = state_lib.apply_updates(d, grads, self.txs[name], collections=d_collections)
      metrics.update(d_metrics)

    def generator_loss(fakes, mu, logvar):
      total, parts, collections = 0.0, {}, {}
      for i in range(len(self.sizes)):
        d = nets[f"D{i}"]
        terms, collections[f"D{i}"] = self.generator_adversarial(
            i, d.params, d.collections, fakes[i], sentence, context)
        parts.update(terms)
        total = total + sum(terms.values())
      extra = self.generator_extra_losses(state, fakes, words, sentence,
                                          batch["caption_len"], batch)
      parts.update(extra, kl=kl_loss(mu, logvar) * self.config.loss.kl_weight)
      total = total + sum(extra.values()) + parts["kl"]
      return total, (parts, collections)

    (g_loss, (g_parts, d_collections)), cotangents = jax.value_and_grad(
        generator_loss, argnums=(0, 1, 2), has_aux=True)(fakes, mu, logvar)
    (g_grads,) = pull_back(cotangents)
    for i in range(len(self.sizes)):
      nets[f"D{i}"] = nets[f"D{i}"].replace(collections=d_collections[f"D{i}"])
    nets["G"] = state_lib.apply_updates(g, g_grads, self.txs["G"], collections=g_collections,
                                        ema_decay=self.config.optim.ema_decay)
    metrics.update(g_parts, G_loss=g_loss)
    return state.replace(step=state.step + 1, nets=nets), metrics

  # ---- evaluation: images from test captions, judged by the DAMSM (and shapes) ----
  def sample_noise(self, key, shape):
    """G's noise for evaluation and --mode=sample (a family may truncate it)."""
    return jax.random.normal(key, shape)

  def _sample(self, state, batch, key):
    words, sentence, mask = self.encode_text(state, batch["caption"], batch["caption_len"])
    k_z, k_ca = jax.random.split(key)
    z = self.sample_noise(k_z, (sentence.shape[0], self.config.model.z_dim))
    g = state.nets["G"]
    out, _ = self.generate(g, g.ema_params, z, sentence, words, mask, k_ca, train=False)
    return out["images"], sentence

  def eval_step(self, state, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2 ** 30)
    key = jax.random.fold_in(key, batch["index"][0])
    images, sentence = self._sample(state, batch, key)
    final = images[-1]
    d = self.damsm
    if d.config.model.backbone != "inception_v3" and final.shape[1] != d.image_size:
      final = jax.image.resize(final, (final.shape[0], d.image_size, d.image_size, 3), "linear")
    enc = d.image_encoder.apply(state.nets["image_encoder"].variables(), final, train=False)
    top1 = damsm_loss.retrieval_top1(enc["global"], sentence)
    out = {"damsm_image_to_text_top1": top1["image_to_text"],
           "images": jnp.clip((images[-1] + 1.0) * 127.5, 0, 255).astype(jnp.uint8),
           # For R-precision (t2ijax/evaluation/r_precision.py) on the host.
           "damsm_image": enc["global"], "sentence": sentence,
           "class_id": batch["class_id"]}
    if "attributes" in batch:
      out["attributes"] = batch["attributes"]
    return out

  def _num_eval_images(self) -> int | None:
    # eval.num_images is reached in whole batches; the metrics see exactly it.
    num = self.config.eval.get("num_images", -1)
    return num if num > 0 else None

  def _judges_shapes(self, output) -> bool:
    return "attributes" in output and self.config.eval.shapes_classifier

  def begin_eval(self):
    from t2ijax.evaluation import suite
    self._inception = suite.InceptionStream(self.config.eval, limit=self._num_eval_images())

  def eval_output_on_host(self, output):
    """Feeds the images to the Inception statistics; keeps them only for shapes."""
    stream = getattr(self, "_inception", None)
    if stream is None:
      return output
    stream.add(output["images"])
    if self._judges_shapes(output):
      return output
    return {k: v for k, v in output.items() if k != "images"}

  def summarize_eval(self, outputs):
    from t2ijax.evaluation import suite
    result = {"damsm_image_to_text_top1": float(np.mean(
        [o["damsm_image_to_text_top1"] for o in outputs])),
              "damsm_chance_top1": 1.0 / self.config.eval.batch_size}
    if self._judges_shapes(outputs[0]):
      result.update(self._shapes_agreement(outputs))
    num = self._num_eval_images()
    joined = {k: np.concatenate([o[k] for o in outputs])[:num]
              for k in ("damsm_image", "sentence", "class_id")}
    # Fed batch by batch in run_eval; outputs that still hold every image
    # (summarize_eval called directly) are fed here.
    stream, self._inception = getattr(self, "_inception", None), None
    images = None
    if stream is None:
      images = np.concatenate([o["images"] for o in outputs])[:num]
    result.update(suite.generated_image_metrics(
        self.config.eval, images, image_features=joined["damsm_image"],
        text_features=joined["sentence"], class_ids=joined["class_id"], inception=stream))
    return result

  def _shapes_agreement(self, outputs):
    from t2ijax.data import shapes
    from t2ijax.evaluation import shapes_classifier
    images = np.concatenate([o["images"] for o in outputs])
    attributes = np.concatenate([o["attributes"] for o in outputs])
    from t2ijax.data import builder
    cache = os.path.join(self.config.data.data_dir or builder.default_data_dir(),
                         "shapes_classifier")
    classifier = shapes_classifier.load_or_train(cache, images.shape[1], seed=0)
    predictions = classifier.predict(images)
    result = {}
    for i, name in enumerate(shapes.ATTRIBUTE_NAMES):
      if name in shapes.REQUIRED_IN_CAPTION:
        result[f"shapes_{name}_accuracy"] = float(np.mean(predictions[name] == attributes[:, i]))
    result["shapes_mean_accuracy"] = float(np.mean(
        [result[f"shapes_{n}_accuracy"] for n in shapes.REQUIRED_IN_CAPTION]))
    for name, value in classifier.real_accuracy().items():
      result[f"shapes_real_{name}_accuracy"] = float(value)
    return result

  def sample_grid(self, state, batch):
    n = min(self.config.log.num_samples, batch["caption"].shape[0])
    small = jax.tree.map(lambda x: x[:n], dict(batch))
    images, _ = self._sample(state, small, jax.random.key(self.config.sample.seed))
    return stage_grid(np.asarray(jax.device_get(small[f"image{self.sizes[-1]}"])),
                      [np.asarray(jax.device_get(x)) for x in images])


def collections_of(variables):
  """Every variable collection but the parameters (BatchNorm statistics, ...)."""
  return {k: v for k, v in variables.items() if k != "params"}


def stage_grid(reals: np.ndarray | None, stages: list[np.ndarray]) -> np.ndarray:
  """Rows of [real, stage 1, stage 2, ...], every stage shown at the largest size."""
  size = stages[-1].shape[1]
  columns = []
  if reals is not None:
    columns.append(reals)
  for images in stages:
    u8 = images_lib.to_uint8(images)
    reps = size // u8.shape[1]
    columns.append(np.repeat(np.repeat(u8, reps, axis=1), reps, axis=2))
  tiles = np.stack(columns, axis=1)              # (N, columns, H, W, 3)
  return images_lib.grid(tiles.reshape(-1, *tiles.shape[2:]), ncols=len(columns))
