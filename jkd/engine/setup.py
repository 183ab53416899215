"""Everything an experiment puts on device before the first step: data, runs, model, programs.

`build(config)` loads the windows once, makes the folds, expands the runs (padded to the device
count), replicates the dataset (`Data`) over the mesh and shards the per-run inputs (`Runs`)
along it. Every objective is `jkd.distill.make_objective` (the listed terms). A config with a
`distill` section is a distillation stage: its teachers are loaded (and their outputs cached) by
`jkd.engine.teachers.prepare` before the training program is built, and travel in `Runs.teachers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jkd.data
import jkd.models
from jkd import config as config_lib
from jkd import distill
from jkd.engine import parallel
from jkd.engine import runs as runs_lib
from jkd.engine import state as state_lib
from jkd.engine import teachers as teachers_lib
from jkd.engine import train as train_lib
from jkd.data import folds as folds_lib


@dataclasses.dataclass
class Setup:
  config: mc.ConfigDict
  mesh: Mesh
  folds: folds_lib.Folds
  runs: list[runs_lib.Run]          # padded; `real` of them are reported
  real: int
  model: nn.Module
  data: train_lib.Data              # replicated
  inputs: train_lib.Runs            # sharded along runs (with the teachers' per-run inputs)
  host_keys: np.ndarray             # (R, 2) the same keys and hyper-parameters on the host
  host_hp: dict
  test: train_lib.Plan              # (R, nb, Be) evaluation batches, sharded
  val: train_lib.Plan | None
  num_batches: int
  num_classes: int
  train_epoch: train_lib.EpochProgram
  evaluate: Callable
  teachers: Any = None              # jkd.engine.teachers.Prepared of a distillation stage
  term_init: Callable | None = None     # (key, the run's teacher variables) -> its distillation-term
                                    # variables (jkd.distill.init)

  @property
  def num_runs(self) -> int:
    return len(self.runs)

  def _sample(self) -> jax.Array:
    x = self.data.x
    c = x.shape[-1]
    fn = lambda a: train_lib.model_input(self.config, a, jnp.zeros(c), jnp.ones(c))
    shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32))
    return jnp.zeros(shape.shape, shape.dtype)

  def _teacher_variables(self) -> Any:
    """Every run's teacher variables (a list per teacher, leading runs axis) for `term_init`."""
    if self.term_init is None or self.teachers is None:
      return None
    host = getattr(self.teachers, "host_variables", None)
    return host if host is not None else self.teachers.variables

  def init_state(self, init_variables: Any = None) -> state_lib.TrainState:
    """Fresh states of every run, sharded along the runs axis (`init_variables`: (R, ...))."""
    state = train_lib.init_state(self.model, self.config, self.host_keys, self._sample(),
                                 self.host_hp, init_variables, self.term_init,
                                 self._teacher_variables())
    return parallel.shard_runs(state, self.mesh)

  def abstract_state(self) -> state_lib.TrainState:
    """What init_state returns, as shapes with shardings (the target of a checkpoint restore)."""
    return state_lib.abstract(self.model, self.host_keys, self._sample(),
                              lambda h: train_lib.make_tx(self.config, h), self.host_hp,
                              NamedSharding(self.mesh, P(parallel.AXIS)), self.term_init,
                              self._teacher_variables())


def _eval_plan(idx: np.ndarray, count: np.ndarray, fold_of_run: np.ndarray,
               batch: int) -> train_lib.Plan:
  per_fold = [folds_lib.eval_batches(jnp.asarray(idx[f]), int(count[f]), batch)
              for f in range(len(idx))]
  indices = np.stack([np.asarray(per_fold[f][0]) for f in fold_of_run])
  mask = np.stack([np.asarray(per_fold[f][1]) for f in fold_of_run]).astype(np.float32)
  return train_lib.Plan(indices, mask)


def build(config: mc.ConfigDict, runs_per_fold: int = 0,
          log: Callable[[str], None] = print) -> Setup:
  """`runs_per_fold`: the most runs per fold of any program this process will build (a
  pipeline's stages), so that a fresh backend is split into enough CPU devices for all of them."""
  # Read when each program is traced: every step, evaluation and teacher cache built below.
  jax.config.update("jax_default_matmul_precision", config.train.matmul_precision)
  windows = jkd.data.load(config.data)
  x, y, subject = windows.x, windows.y, windows.subject
  folds = folds_lib.make_folds(x, y, subject, config.data, num_classes=len(windows.classes))
  real_runs = runs_lib.expand(config, len(folds.train))
  parallel.use_cpu_devices(max(len(real_runs), runs_per_fold * len(folds.train)))
  mesh = parallel.mesh(len(real_runs))
  runs = runs_lib.pad(real_runs, mesh.size)
  fold_of = np.array([r.fold for r in runs])
  batch = config.train.batch_size
  too_small = [f for f in range(len(folds.train)) if folds.train_count[f] < batch]
  if too_small:
    raise config_lib.ConfigError(f"folds {too_small} have fewer training windows than "
                                 f"train.batch_size={batch}; lower --config.train.batch_size")
  num_batches = int(folds.train_count.max()) // batch
  inputs = train_lib.Runs(
      key=np.asarray(state_lib.init_keys(np.array([r.seed for r in runs]))),
      train=folds.train[fold_of], train_count=folds.train_count[fold_of],
      mean=folds.mean[fold_of], std=folds.std[fold_of], hp=runs_lib.hparams(config, runs))
  eb = config.train.eval_batch_size
  test = _eval_plan(folds.test, folds.test_count, fold_of, eb)
  val = _eval_plan(folds.val, folds.val_count, fold_of, eb) if folds.val.shape[1] else None
  num_classes = int(folds.num_classes)
  model = jkd.models.create(config.model.name, num_classes=num_classes, ndim=config.model.ndim,
                            **config.model.kwargs.to_dict())
  data = parallel.replicate(train_lib.Data(np.asarray(x, np.float32), np.asarray(y, np.int32)),
                            mesh)
  sharded = parallel.shard_runs(inputs, mesh)
  prepared, term_init, teacher_outputs, info = None, None, None, distill.Info()
  if "distill" in config:
    prepared = teachers_lib.prepare(config, runs, folds.test_subjects, num_classes, data,
                                    sharded, mesh, log)
    teacher_outputs = prepared.teacher_outputs
    sharded = sharded.replace(teachers=prepared.inputs)
    term_init, info = _term_init(config, model, prepared.teachers, tuple(x.shape[1:]),
                             num_windows=int(x.shape[0]),
                             train_windows=int(np.min(folds.train_count)),
                             batch_size=batch, batches_per_epoch=num_batches)
  step = train_lib.Step(model, config, distill.make_objective(config), num_classes, teacher_outputs)
  return Setup(
      config=config, mesh=mesh, folds=folds, runs=runs, real=len(real_runs), model=model,
      data=data, inputs=sharded, host_keys=inputs.key, host_hp=inputs.hp,
      test=parallel.shard_runs(test, mesh),
      val=parallel.shard_runs(val, mesh) if val is not None else None,
      num_batches=num_batches, num_classes=num_classes,
      train_epoch=train_lib.make_train_epoch(step, num_batches, mesh),
      evaluate=train_lib.make_evaluate(model, config, num_classes, mesh,
                                       distill.make_predict(config, info)),
      teachers=prepared, term_init=term_init)


def check_terms(config: mc.ConfigDict, window: tuple, num_windows: int, train_counts: Any,
                num_classes: int) -> None:
  """Build the distillation terms' parts as shapes only (no data, no compile): what a term's
  `init` refuses for these models and data (a regressor it cannot build, CRD's negatives) is
  raised now, as `jkd.distill.TermError` or ValueError (`jkd.preflight` runs this)."""
  if "distill" not in config:
    return
  model = jkd.models.create(config.model.name, num_classes=num_classes, ndim=config.model.ndim,
                            **config.model.kwargs.to_dict())
  batch = config.train.batch_size
  _term_init(config, model, teachers_lib.build(config, num_classes), tuple(window),
             num_windows=num_windows, train_windows=int(np.min(train_counts)),
             batch_size=batch, batches_per_epoch=int(np.max(train_counts)) // batch)


def _term_init(config: mc.ConfigDict, model: nn.Module, teachers: list, window: tuple,
               num_windows: int = 0, train_windows: int = 0, batch_size: int = 0,
               batches_per_epoch: int = 0) -> tuple[Callable | None, distill.Info]:
  """(`term_init(key, teacher_variables=None) -> variables` of the distillation terms' parts for one
  run (`teacher_variables`: the run's variables of each teacher), or None when no term has any;
  the `jkd.distill.Info` the terms' `init` and `predict` read)."""
  x = jnp.zeros((2, *window), jnp.float32)
  student = jax.eval_shape(lambda: distill.Outputs.of(*model.apply(
      model.init(jax.random.PRNGKey(0), train_lib.image_input(config.model, x, x), train=False),
      train_lib.image_input(config.model, x, x), train=False)))
  needs = distill.teacher_needs(config.loss)
  outs, shapes = [], []
  for t in teachers:
    v = jax.eval_shape(lambda t=t: t.model.init(
        jax.random.PRNGKey(0), train_lib.image_input(t.spec.model, x, x), train=False))
    shapes.append(v)
    outs.append(jax.eval_shape(lambda v, t=t: t.forward(v, x, x, needs), v))
  info = distill.Info(num_windows=num_windows, train_windows=train_windows,
                      teacher_models=tuple(t.spec.model for t in teachers), teachers=tuple(outs),
                      batch_size=batch_size, batches_per_epoch=batches_per_epoch)

  def fn(key, teacher_variables=None):
    return distill.init(config.loss, key, student, outs,
                        dataclasses.replace(info, teacher_variables=teacher_variables))

  has = jax.eval_shape(fn, jax.random.PRNGKey(0), shapes) is not None
  return (fn if has else None), info
