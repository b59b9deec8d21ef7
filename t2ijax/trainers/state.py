"""The train state: arrays only, so it jits, shards and checkpoints as one pytree.

Optimizers (optax transforms) are kept outside, by network name, in the method
object; the state holds each network's parameters, batch statistics, optimizer
state and, where a method keeps one, an EMA copy of the parameters.
"""

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class NetState:
  params: Any
  # Every other variable collection of the network, by name: BatchNorm's
  # 'batch_stats', spectral norm's power-iteration vectors, ...
  collections: Mapping[str, Any] = flax.core.FrozenDict()
  opt_state: Any = ()
  ema_params: Any = ()          # () when the method keeps no EMA

  def variables(self, params=None) -> dict:
    """Flax variables with these (or the given, e.g. EMA) parameters."""
    return {"params": self.params if params is None else params, **self.collections}


@flax.struct.dataclass
class TrainState:
  step: jax.Array                # int32 scalar: optimizer steps taken
  rng: jax.Array                 # uint32 key data; per step: fold_in(rng, step)
  nets: Mapping[str, NetState]

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def new_net(params, tx: optax.GradientTransformation | None, collections=None,
            ema: bool = False) -> NetState:
  return NetState(
      params=params,
      collections=dict(collections) if collections else {},
      opt_state=tx.init(params) if tx is not None else (),
      ema_params=jax.tree.map(jnp.copy, params) if ema else ())


def apply_updates(net: NetState, grads, tx: optax.GradientTransformation,
                  collections=None, ema_decay: float | None = None,
                  learning_rate: jax.Array | float | None = None) -> NetState:
  """One optimizer step; `learning_rate` scales `tx`'s updates by -lr when given
  (for schedules that must survive an optimizer reset, as in DAMSM pretraining)."""
  updates, opt_state = tx.update(grads, net.opt_state, net.params)
  if learning_rate is not None:
    updates = jax.tree.map(lambda u: -learning_rate * u, updates)
  params = optax.apply_updates(net.params, updates)
  ema = net.ema_params
  if ema_decay is not None and ema != ():
    ema = optax.incremental_update(params, ema, step_size=1.0 - ema_decay)
  return net.replace(params=params, opt_state=opt_state, ema_params=ema,
                     collections=net.collections if collections is None else collections)


def all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
