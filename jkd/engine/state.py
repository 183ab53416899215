"""Train state of every run at once: each leaf carries a leading runs axis (R, ...).

`best` holds each run's variables at its best epoch so far (by validation accuracy when a validation
split exists, else test accuracy, as the lab reports); `best_score` is that accuracy (-1 before the
first evaluation). `failed` marks runs stopped by a non-finite loss: their state stays frozen.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array          # (R,) int32 optimiser steps taken
  params: Any
  batch_stats: Any
  opt_state: Any
  failed: Array        # (R,) bool
  best: Any            # {'params', 'batch_stats'} at the best epoch
  best_score: Array    # (R,) float32

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def init_keys(seeds: Array) -> Array:
  """Per-run root keys (R, 2) from integer seeds."""
  return jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))


def create(model: nn.Module, keys: Array, sample: Array,
           make_tx: Callable[[dict], optax.GradientTransformation], hp: dict,
           init_variables: Any = None, term_init: Callable | None = None,
           teacher_variables: Any = None) -> TrainState:
  """Initialise R runs: `keys` (R, 2) root keys, `sample` (1, ...) input, `hp` (R,) arrays.

  Runs are initialised one after another by one compiled function and stacked on the host
  (a vmapped `model.init` compiles ~20x slower on CPU). `init_variables` (leading R axis), when
  given, replaces the random initialisation. `term_init(key)`, when given, returns a run's variables of
  the distillation terms' trainable parts (`jkd.distill.init`), kept under the 'distill' key of
  params and batch_stats; with `teacher_variables` (leading R axis: the runs' teacher variables) it is
  called as `term_init(key, the run's teacher_variables)`. Returns numpy leaves, ready to be sharded.
  """
  one = jax.jit(_init_one(model, sample, make_tx, term_init))
  states = []
  for i in range(len(keys)):
    pick = lambda tree: jax.tree.map(lambda a: np.asarray(a[i]), tree)
    states.append(jax.device_get(one(keys[i], pick(hp), None if init_variables is None
                                     else pick(init_variables),
                                     None if teacher_variables is None else pick(teacher_variables))))
  return jax.tree.map(lambda *leaves: np.stack(leaves), *states)


def _init_one(model, sample, make_tx, term_init=None):
  def one(key, hp_r, variables, inputs=None):
    if variables is None:
      variables = model.init({"params": jax.random.fold_in(key, 0),
                              "dropout": jax.random.fold_in(key, 1)}, sample, train=False)
    term_vars = None
    if term_init is not None:
      k = jax.random.fold_in(key, 3)
      term_vars = term_init(k) if inputs is None else term_init(k, inputs)
    if term_vars is not None:
      variables = {"params": {**variables["params"], "distill": term_vars["params"]},
                   "batch_stats": {**variables.get("batch_stats", {}),
                                   "distill": term_vars["batch_stats"]}}
    return from_variables(variables, make_tx(hp_r))
  return one


def abstract(model: nn.Module, keys: Array, sample: Array,
             make_tx: Callable[[dict], optax.GradientTransformation], hp: dict,
             sharding: Any, term_init: Callable | None = None, teacher_variables: Any = None
             ) -> TrainState:
  """Shapes, dtypes and `sharding` of `create(...)`'s result, not computed (a restore target)."""
  pick = lambda tree: jax.tree.map(lambda a: a[0], tree)
  shape = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
  one = jax.eval_shape(_init_one(model, sample, make_tx, term_init), keys[0], pick(hp), None,
                       None if teacher_variables is None else shape(teacher_variables))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct((len(keys), *a.shape), a.dtype,
                                                     sharding=sharding), one)


def from_variables(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  """One run's fresh state from given variables (e.g. a restored initialisation)."""
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return TrainState(step=jnp.int32(0), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), failed=jnp.bool_(False),
                    best=jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats}),
                    best_score=jnp.float32(-1.0))


def select(mask: Array, new: Any, old: Any) -> Any:
  """`new` where mask (a scalar per run) is true, else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(mask, n, o), new, old)
