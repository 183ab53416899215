"""The compiled training and evaluation programs: every run advanced by one vmapped step.

Data lives once on device (`x` (N, L, C), `y` (N,)); a run is an index set into it (its fold) plus
its fold's normalisation statistics, root key and hyper-parameters (`Runs`, leading axis R). An
epoch is a `lax.scan` over `num_batches` steps; a run whose fold has fewer batches idles on the
extra steps (state unchanged), and a run whose loss or gradient turns non-finite is marked failed
and frozen. The random stream of a run depends only on (seed, epoch, step), so a run trained alone
or among others, or resumed from a checkpoint, sees the same batches and dropout masks.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import optax

from jkd import augment as augment_lib
from jkd import gaf, optim, parallel
from jkd import state as state_lib
from jkd.data import folds as folds_lib
from jkd.data import normalize
from jkd.objective import Objective

Array = jax.Array


@flax.struct.dataclass
class Runs:
  """Per-run inputs, each with a leading runs axis."""
  key: Array          # (R, 2) root key from the run's seed
  train: Array        # (R, n_max) int32 training indices into x, padded
  train_count: Array  # (R,)
  mean: Array         # (R, C) fold normalisation
  std: Array          # (R, C)
  hp: dict            # name -> (R,) float32: every numeric optim.*/loss.* value


def model_input(config: mc.ConfigDict, x: Array, mean: Array, std: Array
                ) -> Array | gaf.GafFactors:
  """Normalised windows, or their GAF images when the model is 2-D (as rank-2 factors, which the
  model's first convolution consumes without building the images)."""
  x = normalize.apply(x, mean, std)
  if config.model.ndim == 2:
    x = gaf.gaf_factors(x, config.model.image_size, method=config.model.gaf_method)
  return x


def make_tx(config: mc.ConfigDict, hp: dict, epoch: Array | int = 0
            ) -> optax.GradientTransformation:
  lr = hp["optim.lr"] * optim.lr_factor(config.optim, epoch, config.train.epochs)
  return optim.make(config.optim, hp, lr)


def train_step(model: nn.Module, config: mc.ConfigDict, objective: Objective,
               state: state_lib.TrainState, x: Array, y: Array, idx: Array, active: Array,
               key: Array, hp: dict, mean: Array, std: Array, epoch: Array, num_classes: int,
               guide: Callable | None = None, aux: Any = ()
               ) -> tuple[state_lib.TrainState, dict[str, Array]]:
  """One SGD step of ONE run (vmap it over runs). Returns the new state and its loss terms.

  `guide(aux, xb, idx)`, when given (an engine extension, e.g. frozen teachers), computes
  `context['teachers']` for the objective from the run's `aux` and the normalised (augmented)
  windows `xb` of batch `idx`.
  """
  xb, labels = normalize.apply(x[idx], mean, std), y[idx]
  if augment_lib.is_active(config.augment):
    xb, labels = augment_lib.augment(jax.random.fold_in(key, 1), xb,
                                     jax.nn.one_hot(labels, num_classes), config.augment)
  context = {"epoch": epoch}
  if guide is not None:
    context["teachers"] = guide(aux, xb, idx)
  if config.model.ndim == 2:
    xb = gaf.gaf_factors(xb, config.model.image_size, method=config.model.gaf_method)

  def loss_fn(params):
    (logits, features), mutated = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, xb, train=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(key, 2)})
    total, terms = objective(logits, features, labels, hp, context)
    return total, (terms, mutated["batch_stats"])

  (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  tx = make_tx(config, hp, epoch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      batch_stats=batch_stats, opt_state=opt_state)
  live = active & ~state.failed
  finite = (jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
            & jnp.isfinite(optax.tree.norm(updates)))
  ok = live & finite
  kept = state_lib.select(ok, new, state)
  kept = kept.replace(failed=state.failed | (live & ~finite))
  terms = {"loss": total, **terms}
  terms = {k: jnp.where(ok, v, 0.0) for k, v in terms.items()}
  return kept, terms | {"count": ok.astype(jnp.float32)}


def make_train_epoch(model: nn.Module, config: mc.ConfigDict, objective: Objective,
                     num_batches: int, num_classes: int, guide: Callable | None = None,
                     mesh: Any = None) -> Callable:
  """`epoch_fn(state, x, y, runs, epoch, aux=()) -> (state, {term: (R,) mean over its steps})`.

  Jitted with the state donated. Every run takes `num_batches` scan steps; a run with fewer full
  batches (`train_count // batch_size`) idles on the rest. `aux` (leading runs axis) goes to
  `guide` (see train_step).
  `mesh`: each device runs its own runs (`jkd.parallel.per_device`).
  """
  batch = config.train.batch_size
  step = jax.vmap(lambda s, x, y, i, a, k, hp, m, sd, e, ax: train_step(
      model, config, objective, s, x, y, i, a, k, hp, m, sd, e, num_classes, guide, ax),
      in_axes=(0, None, None, 0, 0, 0, 0, 0, 0, None, 0))

  def epoch_fn(state, x, y, runs: Runs, epoch, aux=()):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, epoch))(runs.key)
    perm_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    idx, mask = jax.vmap(folds_lib.batch_indices, in_axes=(0, 0, 0, None, None))(
        perm_keys, runs.train, runs.train_count, batch, num_batches)

    def body(state, inputs):
      s, idx_s, mask_s = inputs
      step_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), s))(keys)
      return step(state, x, y, idx_s, mask_s, step_keys, runs.hp, runs.mean, runs.std, epoch, aux)

    state, terms = jax.lax.scan(body, state, (jnp.arange(num_batches), idx.swapaxes(0, 1),
                                              mask.swapaxes(0, 1)))
    sums = {k: v.sum(0) for k, v in terms.items()}
    count = sums.pop("count")
    return state, {k: v / jnp.maximum(count, 1.0) for k, v in sums.items()} | {"steps": count}

  if mesh is not None:
    local = parallel.per_device(epoch_fn, mesh, "R--R-R", "RR")
    epoch_fn = lambda state, x, y, runs, epoch, aux=(): local(state, x, y, runs, epoch, aux)
  return jax.jit(epoch_fn, donate_argnums=0)


def make_evaluate(model: nn.Module, config: mc.ConfigDict, num_classes: int, mesh: Any = None
                  ) -> Callable:
  """`evaluate(variables, x, y, idx, mask, mean, std) -> (confusion (R, K, K), loss (R,))`.

  `idx`, `mask` (R, nb, Be): every run's evaluation batches; confusion[r, true, predicted] counts.
  `mesh`: as in make_train_epoch.
  """
  def one(variables, x, y, idx, mask, mean, std):
    def body(carry, inputs):
      conf, loss = carry
      i, m = inputs
      logits, _ = model.apply(variables, model_input(config, x[i], mean, std), train=False)
      onehot = jax.nn.one_hot(y[i], num_classes) * m[:, None]
      pred = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
      nll = -jnp.sum(onehot * jax.nn.log_softmax(logits), -1)
      return (conf + onehot.T @ pred, loss + nll.sum()), None
    (conf, loss), _ = jax.lax.scan(body, (jnp.zeros((num_classes, num_classes)), 0.0), (idx, mask))
    return conf, loss / jnp.maximum(mask.sum(), 1.0)

  evaluate = jax.vmap(one, in_axes=(0, None, None, 0, 0, 0, 0))
  if mesh is not None:
    evaluate = parallel.per_device(evaluate, mesh, "R--RRRR", "RR")
  return jax.jit(evaluate)


@jax.jit
def update_best(state: state_lib.TrainState, score: Array) -> tuple[state_lib.TrainState, Array]:
  """Keep each run's variables where `score` (R,) beats its best so far; returns which improved."""
  improved = (score > state.best_score) & ~state.failed
  best = jax.vmap(state_lib.select)(improved, state.variables, state.best)
  return state.replace(best=best, best_score=jnp.where(improved, score, state.best_score)), improved


def init_state(model: nn.Module, config: mc.ConfigDict, keys: Array, sample: Array, hp: dict,
               init_variables: Any = None) -> state_lib.TrainState:
  """R fresh runs (numpy leaves); `init_variables` (leading R axis) replaces the random init."""
  return state_lib.create(model, keys, sample, lambda h: make_tx(config, h), hp, init_variables)
