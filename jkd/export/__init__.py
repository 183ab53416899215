"""A trained run as a function of the raw windows, for export (`python -m jkd.export`).

`load(workdir, run, which)` reads a jkd workdir (a pipeline stage's `W/<stage>` included) through
the engine's public readers (`jkd.engine.checkpoint.restore_run`, the resolved `config.json`, the data
source and its folds) and returns a `Trained`: its `logits(x)` maps raw windows `(B, L, C)`, as
the data source gives them, to logits `(B, classes)` as evaluation computes them: the fold's
normalisation, the images of a 2-D model (GAF images dense, the first convolution on them: the
same numbers as jkd's factored one), the model, and a predicting term's head (SimKD: its
projector and the teacher's classifier, `jkd.distill.make_predict`). It is what export traces:
`conv_impl='lax'` without the AVX-512 convolution call (`JKD_CPU_CONV=0`), the same parameters in
plain XLA operations. `engine_logits(x)` computes the same with the engine's own convolution
kernels and GAF factors, as `jkd.engine.train.make_evaluate` does: the reference of the export's check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np


class ExportError(ValueError):
  """A user error: one line, exit status 2."""


@dataclasses.dataclass
class Trained:
  workdir: str
  config: mc.ConfigDict
  run: dict                 # the runs.json entry (run, fold, seed, test_subjects, sweep)
  which: str
  variables: dict           # the run's variables (with its distillation terms' parts)
  logits: Callable          # raw windows (B, L, C) -> logits (B, K), jittable: what is exported
  engine_logits: Callable   # the same as jkd's evaluation computes them (its convolution kernels)
  num_classes: int
  x_test: np.ndarray        # the fold's test windows, raw, and labels
  y_test: np.ndarray
  x_train: np.ndarray       # the fold's training windows (calibration)
  model_name: str

  @property
  def num_params(self) -> int:
    """Parameters evaluation uses: the student's, plus a predicting term's (SimKD: its projector
    and the copy of the teacher's classifier, kept among its batch statistics)."""
    size = lambda tree: int(sum(np.size(a) for a in jax.tree.leaves(tree)))
    term_vars = self.variables.get("batch_stats", {}).get("distill", {})
    return size(self.variables["params"]) + sum(size(t.get("head", {})) for t in term_vars.values())

  @property
  def describe(self) -> str:
    m = self.config.model
    image = f" on {m.image_size}x{m.image_size} {m.get('image', 'gaf').upper()}" if m.ndim == 2 else ""
    return f"{self.model_name} {m.ndim}-D{image}"


@contextlib.contextmanager
def plain_xla():
  """Convolutions as XLA's own (no AVX-512 custom call), for tracing and cost analysis."""
  old = os.environ.get("JKD_CPU_CONV")
  os.environ["JKD_CPU_CONV"] = "0"
  try:
    yield
  finally:
    if old is None:
      os.environ.pop("JKD_CPU_CONV", None)
    else:
      os.environ["JKD_CPU_CONV"] = old


def stage_dir(workdir: str, stage: str | None) -> str:
  """`workdir`, or its pipeline stage `stage`; ExportError when there is no such stage."""
  if not os.path.isdir(workdir):
    raise ExportError(f"--workdir={workdir} does not exist")
  if stage is None:
    if not os.path.exists(os.path.join(workdir, "runs.json")):
      from jkd.report import workdirs
      names = workdirs.stage_names(workdir)
      if names:
        raise ExportError(f"{workdir} is a pipeline workdir; pick a stage with --stage "
                          f"({', '.join(names)})")
    return workdir
  path = os.path.join(workdir, stage)
  if not os.path.exists(os.path.join(path, "runs.json")):
    from jkd.report import workdirs
    names = workdirs.stage_names(workdir)
    raise ExportError(f"no stage {stage!r} under {workdir}; its stages: "
                      f"{', '.join(names) or 'none trained'}")
  return path


def _config(workdir: str) -> mc.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ExportError(f"{workdir} is not a jkd workdir (no config.json)")
  with open(path) as f:
    return mc.ConfigDict(json.load(f))


def checkpointed(workdir: str, run: int) -> tuple[str, int]:
  """Where run `run` of `workdir` has its checkpoints: a search's workdir holds its chosen
  point's results, its checkpoints are in the point's last rung (W/search.json says where)."""
  from jkd.engine import checkpoint
  path = os.path.join(workdir, "search.json")
  if not os.path.isfile(path) or checkpoint.steps(workdir):
    return workdir, run
  with open(path) as f:
    where = json.load(f)["winner_runs"]
  if not 0 <= run < where["count"]:
    raise ExportError(f"no run {run} in {workdir}: its chosen point has runs 0..{where['count'] - 1}")
  return os.path.join(workdir, where["workdir"]), where["first"] + run


def check(workdir: str, run: int, which: str = "last") -> dict:
  """The runs.json entry of `run`, after the checks that need no data: checkpoints exist, the run
  exists, and `which='best'` was kept for it. ExportError otherwise."""
  from jkd.engine import checkpoint, results
  _config(workdir)
  workdir, run = checkpointed(workdir, run)
  if not checkpoint.steps(workdir):
    raise ExportError(f"{workdir} has no checkpoints ({checkpoint.directory(workdir)}); train "
                      "it first")
  if which not in ("last", "best"):
    raise ExportError(f"--which={which!r}: pick last or best")
  runs = checkpoint.read_runs(workdir)
  if not 0 <= run < len(runs):
    raise ExportError(f"no run {run} in {workdir}: it has runs 0..{len(runs) - 1}")
  if which == "best":
    try:
      res = results.read(workdir)["runs"]
    except FileNotFoundError:
      res = []
    entry = next((r for r in res if r.get("run") == run), None)
    if entry is None or not entry.get("best") or entry["best"].get("epoch") is None:
      raise ExportError(f"run {run} of {workdir} kept no best epoch (results.json has none); "
                        "use --which=last")
  return runs[run]


def _predict(config: mc.ConfigDict, model, num_classes: int, window: tuple) -> Callable | None:
  """`jkd.distill.make_predict` of a distillation stage (SimKD), else None."""
  if "distill" not in config:
    return None
  from jkd import distill, images
  from jkd.engine import teachers as teachers_lib
  ts = teachers_lib.build(config, num_classes)
  x = jnp.zeros((2, *window), jnp.float32)
  needs = distill.teacher_needs(config.loss)
  outs = []
  for t in ts:
    v = jax.eval_shape(lambda t=t: t.model.init(
        jax.random.PRNGKey(0), images.image_input(t.spec.model, x, x), train=False))
    outs.append(jax.eval_shape(lambda v, t=t: t.forward(v, x, x, needs), v))
  info = distill.Info(teacher_models=tuple(t.spec.model for t in ts), teachers=tuple(outs))
  return distill.make_predict(config, info)


def load(workdir: str, run: int = 0, which: str = "last") -> Trained:
  """Run `run` of `workdir` (its `which` variables) as a function of the raw windows."""
  import jkd.data
  import jkd.models
  from jkd.engine import checkpoint
  from jkd.images import gaf
  from jkd import images
  from jkd.data import folds as folds_lib
  from jkd.data import normalize
  workdir, run = checkpointed(workdir, run)
  entry = check(workdir, run, which)
  config = _config(workdir)
  windows = jkd.data.load(config.data)
  folds = folds_lib.make_folds(windows.x, windows.y, windows.subject, config.data,
                               num_classes=len(windows.classes))
  f = int(entry["fold"])
  test = folds.test[f][:folds.test_count[f]]
  train = folds.train[f][:folds.train_count[f]]
  k = int(folds.num_classes)
  kwargs = config.model.kwargs.to_dict()
  model = jkd.models.create(config.model.name, num_classes=k, ndim=config.model.ndim,
                            **{**kwargs, "conv_impl": "lax"})
  engine = jkd.models.create(config.model.name, num_classes=k, ndim=config.model.ndim, **kwargs)
  window = tuple(windows.x.shape[1:])
  predict = _predict(config, model, k, window)
  variables = checkpoint.restore_run(workdir, run, which, distill=True)
  variables = jax.tree.map(jnp.asarray, variables)
  mean, std = folds.mean[f], folds.std[f]
  student = checkpoint.student_variables(variables)
  term_vars = {n: tree.get(checkpoint.DISTILL, {}) for n, tree in variables.items()}
  model_cfg = config.model

  def logits(x, model=model, dense=True):
    z = images.image_input(model_cfg, normalize.apply(x, mean, std), x)
    out, features = model.apply(student, gaf.as_dense(z) if dense else z, train=False)
    return out if predict is None else predict(term_vars, out, features)

  def engine_logits(x):
    """As `jkd.engine.train.make_evaluate` computes them: the configured convolutions, GAF factors."""
    return logits(x, engine, dense=False)

  used = variables if predict is not None else student
  return Trained(workdir=workdir, config=config, run=entry, which=which, variables=used,
                 logits=logits, engine_logits=engine_logits, num_classes=k, x_test=np.asarray(windows.x[test], np.float32),
                 y_test=np.asarray(windows.y[test]),
                 x_train=np.asarray(windows.x[train], np.float32), model_name=config.model.name)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, -1) == y)) if len(y) else float("nan")
