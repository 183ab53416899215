"""The compiled training and evaluation programs: every run advanced by one vmapped step.

Data lives once on device (`x` (N, L, C), `y` (N,)); a run is an index set into it (its fold) plus
its fold's normalisation statistics, root key and hyper-parameters (`Runs`, leading axis R). An
epoch is a loop of `num_batches` steps on device, run in one or several chunks of steps
(`EpochProgram`); a run whose fold has fewer batches idles on the remaining steps (state unchanged), and
a run whose loss or gradient turns non-finite is marked failed and frozen. The random stream of a
run depends only on (seed, epoch, step), so a run trained alone or among others, resumed from a
checkpoint, or its epoch cut into other chunks, sees the same batches and dropout masks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax

from jkd.engine import augment as augment_lib
from jkd.engine import checkpoint, optim, parallel
from jkd.engine import state as state_lib
from jkd.data import folds as folds_lib
from jkd.data import normalize
from jkd.distill import Context
from jkd.images import image_input

Array = jax.Array


@flax.struct.dataclass
class Data:
  """The dataset, once on device and replicated: every run indexes into it."""
  x: Array              # (N, L, C) raw windows, float32
  y: Array              # (N,) int32 labels
  replicated: ClassVar[bool] = True


@flax.struct.dataclass
class Runs:
  """Per-run inputs, each with a leading runs axis."""
  key: Array            # (R, 2) root key from the run's seed
  train: Array          # (R, n_max) int32 training indices into x, padded
  train_count: Array    # (R,)
  mean: Array           # (R, C) fold normalisation
  std: Array            # (R, C)
  hp: dict              # dotted key -> (R,) float32: every numeric optim.* key and the per-run keys
  teachers: Any = ()    # per teacher: its variables or its cached outputs (`jkd.engine.teachers.Prepared`)


@flax.struct.dataclass
class Plan:
  """Per-run batches of an epoch or of an evaluation: dataset indices and which are real."""
  index: Array          # (R, nb, B) int32
  mask: Array           # (R, nb) (training: the run takes the step) or (R, nb, B) (evaluation)


@flax.struct.dataclass
class Clock:
  """Where the program is, the same in every run (replicated scalars)."""
  epoch: Array          # () int32, 0-based
  step: Array           # () int32, the step's index within its epoch
  replicated: ClassVar[bool] = True


@flax.struct.dataclass
class StepBatch:
  """One run's batch of one step."""
  index: Array          # (B,) dataset indices
  active: Array         # () bool: the run takes this step (a run with fewer batches idles)
  key: Array            # (2,) the run's key of this step (augmentation, dropout, terms)


def model_input(config: mc.ConfigDict, x: Array, mean: Array, std: Array) -> Any:
  """Normalised windows, or (2-D models) their images as the first convolution consumes them
  (`jkd.images.image_input`: GAF factors or persistence images, from the raw windows `x`)."""
  return image_input(config.model, normalize.apply(x, mean, std), x)


def make_tx(config: mc.ConfigDict, hp: dict, epoch: Array | int = 0
            ) -> optax.GradientTransformation:
  lr = hp["optim.lr"] * optim.lr_factor(config.optim, epoch, config.train.epochs, hp)
  return optim.make(config.optim, hp, lr)


@dataclasses.dataclass(frozen=True)
class Step:
  """The training step's static parts (what decides the program); calling it takes one SGD step of
  ONE run (vmap it over runs): `step(state, data, run, batch, clock) -> (state, loss terms)`.

  `objective(logits, features, labels, hp, context) -> (total, terms, term batch_stats)` is the
  run's loss (`jkd.distill.make_objective`). `teacher_outputs(teachers, xb, raw, index)`, when given (a
  distillation stage's frozen teachers, `jkd.engine.teachers.Prepared`), computes the teachers' outputs
  from the run's `Runs.teachers` and the normalised (augmented) windows `xb` (`raw`: before
  normalisation). The trainable parts of distillation terms (`params['distill']`,
  `batch_stats['distill']`) are trained with the student and reach the objective as
  `Context.distill`.
  """
  model: nn.Module
  config: mc.ConfigDict
  objective: Callable
  num_classes: int
  teacher_outputs: Callable | None = None

  def __call__(self, state: state_lib.TrainState, data: Data, run: Runs, batch: StepBatch,
               clock: Clock) -> tuple[state_lib.TrainState, dict[str, Array]]:
    config, key, hp = self.config, batch.key, run.hp
    raw, labels = data.x[batch.index], data.y[batch.index]
    xb = normalize.apply(raw, run.mean, run.std)
    if augment_lib.is_active(config.augment):
      xb, labels = augment_lib.augment(jax.random.fold_in(key, 1), xb,
                                       jax.nn.one_hot(labels, self.num_classes), config.augment)
      raw = xb * run.std + run.mean
    teachers = self.teacher_outputs(run.teachers, xb, raw, batch.index) if self.teacher_outputs is not None else ()
    context = Context(epoch=clock.epoch, step=clock.step, index=batch.index,
                      key=jax.random.fold_in(key, 3), pool=run.train, pool_count=run.train_count,
                      all_labels=data.y, teachers=teachers)
    xb = image_input(config.model, xb, raw)
    student_stats, own_stats = _split(state.batch_stats)

    def loss_fn(params):
      student_params, own_params = _split(params)
      (logits, features), mutated = self.model.apply(
          {"params": student_params, "batch_stats": student_stats}, xb, train=True,
          mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(key, 2)})
      ctx = context
      if own_params is not None or own_stats is not None:
        ctx = context.replace(distill={"params": own_params or {}, "batch_stats": own_stats or {}})
      total, terms, own_new = self.objective(logits, features, labels, hp, ctx)
      return total, (terms, _join(mutated["batch_stats"], own_new or own_stats))

    (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    tx = make_tx(config, hp, clock.epoch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
    live = batch.active & ~state.failed
    finite = (jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
              & jnp.isfinite(optax.tree.norm(updates)))
    ok = live & finite
    kept = state_lib.select(ok, new, state)
    kept = kept.replace(failed=state.failed | (live & ~finite))
    terms = {"loss": total, **terms}
    terms = {k: jnp.where(ok, v, 0.0) for k, v in terms.items()}
    return kept, terms | {"count": ok.astype(jnp.float32)}


def _split(tree: dict) -> tuple[dict, Any]:
  """(the student's part, the distillation terms' part or None) of params or batch_stats."""
  term_vars = tree.get(checkpoint.DISTILL) if isinstance(tree, dict) else None
  return {k: v for k, v in tree.items() if k != checkpoint.DISTILL}, term_vars


def _join(student: dict, term_vars: Any) -> dict:
  return student if term_vars is None else {**student, checkpoint.DISTILL: term_vars}


class Pacer:
  """Chunk sizes for an epoch run in pieces: about `seconds` of steps each, from the time per step
  measured on the previous chunk (the process's first chunk compiles, so it is one step and is not
  measured)."""

  def __init__(self, seconds: float = 5.0):
    self.seconds = seconds
    self.per_step: float | None = None   # seconds per step, latest measurement
    self.calls = 0

  def size(self, remaining: int) -> int:
    if self.per_step is None:
      return min(remaining, 1)
    return int(min(remaining, max(1, self.seconds // self.per_step)))

  def record(self, steps: int, seconds: float) -> None:
    self.calls += 1
    if self.calls > 1:
      self.per_step = seconds / steps


class EpochProgram:
  """One epoch of every run as three jitted programs, so that it can run in chunks of steps:

    plan(state, data, runs, clock) -> (Plan of the epoch's batches, zero term sums)
    steps(state, sums, data, runs, plan, span) -> (state, sums)   steps span.lo .. span.hi - 1
    finish(sums) -> {term: (R,) mean over the run's steps, 'steps': (R,)}

  `span` (`Span`: the epoch and the chunk's first and last step) is traced: ONE compiled program
  runs any chunk. A step computes the same thing in whichever chunk it falls (a run's random
  stream depends on (seed, epoch, step) only, and the terms are summed step after step in the
  carry), so an epoch in N chunks is bit-identical to one call. Calling the object runs a whole
  epoch in one chunk; `run(..., pacer=Pacer())` sizes the chunks and calls `report(steps_done,
  sums)` after each. `lower(...).compile()` compiles all three ahead of time (the benchmarks time
  that).
  """

  def __init__(self, plan: Callable, steps: Callable, finish: Callable, num_batches: int):
    self.plan, self.steps, self.finish, self.num_batches = plan, steps, finish, num_batches

  def __call__(self, state, data: Data, runs: Runs, epoch):
    return self.run(state, data, runs, epoch)

  def run(self, state, data: Data, runs: Runs, epoch, pacer: Pacer | None = None,
          report: Callable | None = None, _programs=None):
    plan_fn, steps, finish = _programs or (self.plan, self.steps, self.finish)
    epoch = jnp.int32(epoch)
    plan, sums = plan_fn(state, data, runs, Clock(epoch, jnp.int32(0)))
    done, total = 0, self.num_batches
    while done < total:
      n = total - done if pacer is None else _agree(pacer.size(total - done))
      t0 = time.perf_counter()
      state, sums = steps(state, sums, data, runs, plan,
                          Span(epoch, jnp.int32(done), jnp.int32(done + n)))
      done += n
      if pacer is not None:
        jax.block_until_ready(sums)
        pacer.record(n, time.perf_counter() - t0)
      if report is not None:
        report(done, sums)
    return state, finish(sums)

  def lower(self, state, data: Data, runs: Runs, epoch) -> "_Lowered":
    return _Lowered(self, (state, data, runs, jnp.int32(epoch)))


@flax.struct.dataclass
class Span:
  """The steps a chunk of an epoch runs, the same in every run (replicated scalars)."""
  epoch: Array          # () int32
  lo: Array             # () first step
  hi: Array             # () one past the last step
  replicated: ClassVar[bool] = True


class _Lowered:
  """`EpochProgram.lower(...)`: `.compile()` returns the epoch as a callable of compiled programs."""

  def __init__(self, program: EpochProgram, args: tuple):
    self.program, self.args = program, args

  def compile(self) -> Callable:
    p, (state, data, runs, epoch) = self.program, self.args
    clock = Clock(epoch, jnp.int32(0))
    plan_fn = p.plan.lower(state, data, runs, clock).compile()
    plan, sums = jax.eval_shape(p.plan, state, data, runs, clock)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    steps = p.steps.lower(state, sums, data, runs, plan, Span(scalar, scalar, scalar)).compile()
    finish = p.finish   # tiny; compiled at its first call, for the shardings it is given
    return lambda state, data, runs, epoch: p.run(state, data, runs, epoch,
                                                  _programs=(plan_fn, steps, finish))


def _agree(n: int) -> int:
  """Every process runs the same chunks: process 0's size (one tiny collective per chunk)."""
  if parallel.process_count() > 1:
    from jax.experimental import multihost_utils
    n = int(multihost_utils.broadcast_one_to_all(np.int32(n)))
  return n


def vmap_runs(fn: Callable) -> Callable:
  """`fn` of one run, mapped over the runs axis of every argument that has one (its axes derive
  from the arguments' types: `jkd.engine.parallel.has_runs_axis`)."""
  def mapped(*args):
    axes = tuple(0 if parallel.has_runs_axis(a) else None for a in args)
    return jax.vmap(fn, in_axes=axes)(*args)
  return mapped


def make_train_epoch(step: Step, num_batches: int, mesh: Any = None) -> EpochProgram:
  """The epoch program (`EpochProgram`) of the training step `step`: `program(state, data, runs,
  epoch) -> (state, {term: (R,) mean over its steps, 'steps': (R,)})`, or in chunks with
  `program.run`.

  The state is donated. Every run takes `num_batches` steps; a run with fewer full batches
  (`train_count // batch_size`) idles on the rest. `mesh`: each device runs its own runs
  (`jkd.engine.parallel.per_device`).
  """
  batch = step.config.train.batch_size
  vstep = vmap_runs(step)

  def epoch_keys(runs: Runs, epoch):
    return jax.vmap(lambda k: jax.random.fold_in(k, epoch))(runs.key)

  def step_batch(plan: Plan, keys, s):
    """Every run's batch of step `s` (its key: the epoch key's stream 1 at `s`)."""
    return StepBatch(index=jax.lax.dynamic_index_in_dim(plan.index, s, 1, keepdims=False),
                     active=jax.lax.dynamic_index_in_dim(plan.mask, s, 1, keepdims=False),
                     key=jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), s))(keys))

  def plan_fn(state, data: Data, runs: Runs, clock: Clock):
    keys = epoch_keys(runs, clock.epoch)
    perm_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    index, mask = jax.vmap(folds_lib.batch_indices, in_axes=(0, 0, 0, None, None))(
        perm_keys, runs.train, runs.train_count, batch, num_batches)
    plan = Plan(index, mask)
    _, terms = jax.eval_shape(vstep, state, data, runs, step_batch(plan, keys, 0), clock)
    return plan, jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), terms)

  def steps_fn(state, sums, data: Data, runs: Runs, plan: Plan, span: Span):
    keys = epoch_keys(runs, span.epoch)

    def body(s, carry):
      state, sums = carry
      state, terms = vstep(state, data, runs, step_batch(plan, keys, s),
                           Clock(span.epoch, jnp.asarray(s, jnp.int32)))
      return state, jax.tree.map(jnp.add, sums, terms)

    return jax.lax.fori_loop(span.lo, span.hi, body, (state, sums))

  def finish_fn(sums):
    sums = dict(sums)
    count = sums.pop("count")
    return {k: v / jnp.maximum(count, 1.0) for k, v in sums.items()} | {"steps": count}

  if mesh is not None:
    plan_fn = parallel.per_device(plan_fn, mesh)
    steps_fn = parallel.per_device(steps_fn, mesh)
  return EpochProgram(jax.jit(plan_fn), jax.jit(steps_fn, donate_argnums=(0, 1)),
                      jax.jit(finish_fn), num_batches)


def make_evaluate(model: nn.Module, config: mc.ConfigDict, num_classes: int, mesh: Any = None,
                  predict: Callable | None = None) -> Callable:
  """`evaluate(variables, data, runs, plan) -> (confusion (R, K, K), loss (R,))`.

  `plan` (`Plan`, index and mask (R, nb, Be)): every run's evaluation batches; `runs`: their
  normalisation; confusion[r, true, predicted] counts. `mesh`: as in make_train_epoch.
  `predict(term_vars, logits, features) -> logits`, when given (`jkd.distill.make_predict`: a
  term such as SimKD that predicts through its own parts), turns the student's outputs into its
  predictions with the run's distillation-term variables `term_vars` (`params['distill']`,
  `batch_stats['distill']` of `variables`); else the student's logits.
  """
  def one(variables, data: Data, run: Runs, plan: Plan):
    student = checkpoint.student_variables(variables)
    term_vars = {k: tree.get(checkpoint.DISTILL, {}) for k, tree in variables.items()}
    x, y = data.x, data.y

    def body(carry, inputs):
      conf, loss = carry
      i, m = inputs
      logits, features = model.apply(student, model_input(config, x[i], run.mean, run.std),
                                     train=False)
      if predict is not None:
        logits = predict(term_vars, logits, features)
      onehot = jax.nn.one_hot(y[i], num_classes) * m[:, None]
      pred = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
      nll = -jnp.sum(onehot * jax.nn.log_softmax(logits), -1)
      return (conf + onehot.T @ pred, loss + nll.sum()), None
    (conf, loss), _ = jax.lax.scan(body, (jnp.zeros((num_classes, num_classes)), 0.0),
                                   (plan.index, plan.mask))
    return conf, loss / jnp.maximum(plan.mask.sum(), 1.0)

  evaluate = vmap_runs(one)
  if mesh is not None:
    evaluate = parallel.per_device(evaluate, mesh)
  return jax.jit(evaluate)


@jax.jit
def update_best(state: state_lib.TrainState, score: Array) -> tuple[state_lib.TrainState, Array]:
  """Keep each run's variables where `score` (R,) beats its best so far; returns which improved."""
  improved = (score > state.best_score) & ~state.failed
  best = jax.vmap(state_lib.select)(improved, state.variables, state.best)
  return state.replace(best=best, best_score=jnp.where(improved, score, state.best_score)), improved


def init_state(model: nn.Module, config: mc.ConfigDict, keys: Array, sample: Array, hp: dict,
               init_variables: Any = None, term_init: Callable | None = None,
               teacher_variables: Any = None) -> state_lib.TrainState:
  """R fresh runs (numpy leaves); `init_variables` (leading R axis) replaces the random init;
  `term_init`: the distillation terms' trainable parts, `teacher_variables` the runs' teacher variables it
  reads (`jkd.engine.state.create`)."""
  return state_lib.create(model, keys, sample, lambda h: make_tx(config, h), hp, init_variables,
                          term_init, teacher_variables)
