"""Frozen teachers of a distillation stage: their variables per run, their outputs in the step.

One schema everywhere (a pipeline's `teachers` section and a KD stage's resolved one):

    teachers.<name> = {model: {name, ndim, image, image_size, ...}   the teacher's model section
                       source: ''          ''  = trained by the pipeline's stage teacher_<name>
                                           a jkd workdir: run (fold, seed) of the student is
                                           taught by the run with the same fold and seed
                                           a lab '.pth.tar' path with {fold} (0-based), {seed},
                                           {subject} (the fold's first test subject)
                       which: 'last'       'last' or 'best' variables of a workdir
                       epoch: 0            > 0: the checkpoint after that epoch (ESKD's early-
                                           stopped teacher); the teacher stage keeps it
                       weight: 1.0}        per-run teacher weight (sweepable)

A KD stage's `distill.teachers` names its teachers in order. Teachers run in eval mode
(BatchNorm running statistics, no dropout) under `stop_gradient`, on the same (augmented) window
the student sees; 2-D teachers on its image (GAF or persistence image, made in the step). When no
augmentation is active a teacher's outputs never change, so they are computed once per run over
every window and the step only gathers them — for each teacher whose outputs fit in
`distill.cache_gb` (image teachers first: they are the costly ones). `prepare` logs which.
Everything is loaded and checked by `prepare` before the training program is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np

import jkd.models
from jkd.engine import augment as augment_lib
from jkd.engine import checkpoint, parallel
from jkd import convert, images
from jkd import config as config_lib
from jkd.data import normalize
from jkd.distill import LAST, Needs, Outputs

Array = jax.Array


def spec(model: dict | None = None, **kw) -> mc.ConfigDict:
  """A teacher entry: `model` overrides the engine's model section defaults."""
  m = config_lib.base().model
  m.update(model or {})
  out = mc.ConfigDict({"model": m, "source": "", "which": "last", "epoch": 0, "weight": 1.0})
  out.update(kw)
  return out


@dataclasses.dataclass(frozen=True)
class Teacher:
  name: str
  model: nn.Module
  spec: mc.ConfigDict

  def forward(self, variables: Any, x: Array, raw: Array | None, needs: Needs) -> Outputs:
    """Outputs (logits, the stages `needs` names, the embedding if needed), eval mode, no grad."""
    variables = jax.lax.stop_gradient(variables)
    logits, features = self.model.apply(variables, images.image_input(self.spec.model, x, raw),
                                        train=False)
    out = Outputs.of(logits, features, tuple(sorted(needs.stages)), needs.embedding)
    return jax.lax.stop_gradient(out)


def build(config: mc.ConfigDict, num_classes: int) -> list[Teacher]:
  """The stage's teachers (`distill.teachers` order) as models."""
  out = []
  for name in config.distill.teachers:
    s = config.teachers[name]
    out.append(Teacher(name, jkd.models.create(s.model.name, num_classes=num_classes,
                                               ndim=s.model.ndim, **s.model.kwargs.to_dict()), s))
  return out


# ----------------------------------------------------------------------------- sources

def is_torch_source(source: str) -> bool:
  return source.endswith((".pth.tar", ".pth", ".pt", ".tar")) or "{fold}" in source


def torch_path(source: str, fold: int, seed: int, test_subjects: list) -> str:
  subjects = list(test_subjects[fold])
  return source.format(fold=fold, seed=seed, subject=subjects[0] if subjects else "")


def check_source(name: str, s: mc.ConfigDict, pairs: list[tuple[int, int]] | None = None,
                 test_subjects: list | None = None, num_classes: int | None = None) -> None:
  """Raise a one-line ConfigError for a teacher source that cannot serve runs `pairs` ((fold,
  seed)); a workdir is checked for its config, runs and checkpoint now, before anything trains,
  and a lab file for the architecture and (`num_classes`) the classes the config says."""
  src, key = s.source, f"teachers.{name}.source"
  if s.which not in ("last", "best"):
    raise config_lib.ConfigError(f"teachers.{name}.which={s.which!r} is not one of last, best")
  if int(s.epoch) < 0:
    raise config_lib.ConfigError(f"teachers.{name}.epoch={s.epoch} must be >= 0 (0: the last)")
  if not src:
    raise config_lib.ConfigError(f"{key} is empty: name a teacher workdir or a '.pth.tar' path "
                                 "with {fold}")
  if is_torch_source(src):
    if int(s.epoch):
      raise config_lib.ConfigError(f"teachers.{name}.epoch picks a jkd checkpoint; {src} is a "
                                   "PyTorch file: set the path of that epoch's file instead")
    try:
      src.format(fold=0, seed=0, subject="")
    except (KeyError, IndexError, ValueError) as e:
      raise config_lib.ConfigError(f"{key}={src!r}: bad placeholder ({e}); use {{fold}}, "
                                   "{seed}, {subject}") from None
    for fold, seed in pairs or []:
      if test_subjects is None and "{subject}" in src:
        continue
      path = torch_path(src, fold, seed, test_subjects or [[]] * (fold + 1))
      if not os.path.isfile(path):
        raise config_lib.ConfigError(f"{key}: {path} (fold {fold}, seed {seed}) does not exist; "
                                     "fix the path or its {fold}/{seed} placeholders")
    if pairs and test_subjects is not None:
      _check_torch_model(name, s, torch_path(src, *pairs[0], test_subjects), num_classes)
    return
  if not os.path.isfile(os.path.join(src, "config.json")):
    raise config_lib.ConfigError(f"{key}={src!r} is not a jkd workdir (no config.json); train "
                                 "the teacher first or fix the path")
  with open(os.path.join(src, "config.json")) as f:
    model = json.load(f)["model"]
  if (model["name"], model["ndim"]) != (s.model.name, s.model.ndim):
    raise config_lib.ConfigError(
        f"teachers.{name}: {src} holds {model['name']} (ndim {model['ndim']}) but "
        f"teachers.{name}.model says {s.model.name} (ndim {s.model.ndim}); make them agree")
  have = {(r["fold"], r["seed"]) for r in checkpoint.read_runs(src)} if os.path.exists(
      os.path.join(src, "runs.json")) else set()
  missing = [p for p in pairs or [] if p not in have]
  if missing:
    raise config_lib.ConfigError(f"{key}={src!r} has no run for fold {missing[0][0]} seed "
                                 f"{missing[0][1]}; train the teacher with the same folds and "
                                 "seeds or fix the path")
  steps = checkpoint.steps(src)
  if not steps:
    raise config_lib.ConfigError(f"{key}={src!r} has no checkpoint; train the teacher first")
  if int(s.epoch) and int(s.epoch) not in steps:
    raise config_lib.ConfigError(
        f"teachers.{name}.epoch={s.epoch}: {src} keeps checkpoints after epochs "
        f"{sorted(steps)}; pick one, or retrain the teacher with train.keep_epochs=({s.epoch},)")


def _check_torch_model(name: str, s: mc.ConfigDict, path: str, num_classes: int | None) -> None:
  """The lab file holds the network `teachers.<name>.model` names (and `num_classes` classes)."""
  try:
    _, info = convert.load_torch_wrn(path, ndim=s.model.ndim, return_info=True)
  except convert.CheckpointError as e:
    raise config_lib.ConfigError(f"teachers.{name}.source: {e}") from None
  if info.model != s.model.name or (num_classes is not None and info.num_classes != num_classes):
    raise config_lib.ConfigError(
        f"teachers.{name}: {path} holds {info.model} with {info.num_classes} classes, the config "
        f"says {s.model.name} with {num_classes}; fix teachers.{name}.model or the path")


def load(teacher: Teacher, runs: list, test_subjects: list, num_classes: int) -> Any:
  """The teacher's variables for every run (leading runs axis, numpy)."""
  s = teacher.spec
  if is_torch_source(s.source):
    return _load_torch(teacher, runs, test_subjects, num_classes)
  idx = [checkpoint.run_index(s.source, (r.fold, r.seed)) for r in runs]
  return checkpoint.restore_runs(s.source, idx, s.which, step=int(s.epoch) or None)


def _load_torch(teacher: Teacher, runs: list, test_subjects: list, num_classes: int) -> Any:
  loaded: dict[str, Any] = {}
  out = []
  m = teacher.spec.model
  for r in runs:
    path = torch_path(teacher.spec.source, r.fold, r.seed, test_subjects)
    if path not in loaded:
      if not os.path.isfile(path):
        raise config_lib.ConfigError(
            f"teachers.{teacher.name}.source: {path} (fold {r.fold}, seed {r.seed}) does not "
            f"exist; check teachers.{teacher.name}.source={teacher.spec.source!r}")
      variables, info = convert.load_torch_wrn(path, ndim=m.ndim, return_info=True)
      if (info.model, info.num_classes) != (m.name, num_classes):
        raise config_lib.ConfigError(
            f"teachers.{teacher.name}: {path} holds {info.model} with {info.num_classes} classes, "
            f"the config says {m.name} with {num_classes}; fix teachers.{teacher.name}.model or "
            "the path")
      loaded[path] = variables
    out.append(loaded[path])
  return jax.tree.map(lambda *a: np.stack([np.asarray(v, np.float32) for v in a]), *out)


# ----------------------------------------------------------------------------- cache

def output_bytes(teacher: Teacher, window: tuple[int, ...], num_classes: int, needs: Needs) -> int:
  """Bytes of one window's cached outputs (logits, the needed maps and embedding)."""
  x = jnp.zeros((1, *window))
  variables = jax.eval_shape(lambda: teacher.model.init(
      jax.random.PRNGKey(0), images.image_input(teacher.spec.model, x, x), train=False))
  out = jax.eval_shape(lambda v: teacher.forward(v, x, x, needs), variables)
  return 4 * sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(out))


def cache_plan(teachers: list[Teacher], config: mc.ConfigDict, windows: int, runs: int,
               window: tuple[int, ...], num_classes: int, needs: Needs
               ) -> tuple[list[bool], list[str]]:
  """Which teachers to cache, and a log line per teacher saying why."""
  d = config.distill
  if augment_lib.is_active(config.augment) or not d.cache:
    why = "augmentation is active" if d.cache else "distill.cache is off"
    return [False] * len(teachers), [f"teacher {t.name}: runs forward in every step ({why})"
                                     for t in teachers]
  budget = d.cache_gb * 2 ** 30
  plan, lines = [False] * len(teachers), [""] * len(teachers)
  stages = tuple(sorted(needs.stages))
  shown = ", ".join("last" if i == LAST else str(i) for i in stages)
  what = "logits" + (f", stage ({shown}) outputs" if stages else "") + (
      ", embedding" if needs.embedding else "")
  for i in sorted(range(len(teachers)), key=lambda i: -teachers[i].spec.model.ndim):
    t = teachers[i]
    size = output_bytes(t, window, num_classes, needs) * windows * runs
    if size <= budget:
      plan[i], budget = True, budget - size
      lines[i] = f"teacher {t.name}: {what} cached once per run ({size / 2 ** 20:.0f} MiB)"
    else:
      lines[i] = (f"teacher {t.name}: runs forward in every step ({what} would take "
                  f"{size / 2 ** 30:.1f} GiB > distill.cache_gb left)")
  return plan, lines


def make_cache_fn(teacher: Teacher, needs: Needs, batch: int, mesh: Any = None) -> Callable:
  """`fn(variables (R, ...), data (jkd.engine.train.Data), runs (jkd.engine.train.Runs: their normalisation))
  -> Outputs (R, N, ...)`: the teacher's outputs on every window, for every run.

  A device's runs go one after another (`lax.map`), so memory holds one run's batch at a time."""
  def one(variables, x, mean, std):
    n = x.shape[0]
    pad = -n % batch
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(
        -1, batch, *x.shape[1:])
    out = jax.lax.map(lambda xb: teacher.forward(variables, normalize.apply(xb, mean, std), xb,
                                                 needs), xp)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)
  def local(variables, data, runs):
    return jax.lax.map(lambda v: one(v[0], data.x, v[1], v[2]), (variables, runs.mean, runs.std))
  if mesh is not None:
    local = parallel.per_device(local, mesh)
  return jax.jit(local)


# ----------------------------------------------------------------------------- in the step

def make_teacher_outputs(teachers: list[Teacher], cached: list[bool], needs: Needs) -> Callable:
  """`teacher_outputs(inputs, xb, raw, idx) -> [Outputs] per teacher` for ONE run (vmapped by the step).

  `inputs[i]` is teacher i's variables, or its cached outputs over every window when `cached[i]`;
  `xb` the normalised (augmented) batch, `raw` the same before normalisation."""
  def teacher_outputs(inputs, xb, raw, idx):
    return [jax.tree.map(lambda v: v[idx], a) if c else t.forward(a, xb, raw, needs)
            for t, c, a in zip(teachers, cached, inputs)]
  return teacher_outputs


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A distillation stage's teachers, ready before the training program is built."""
  teachers: list[Teacher]
  teacher_outputs: Callable  # see make_teacher_outputs
  inputs: list              # per teacher: variables or cached outputs, sharded along runs (the
                            # runs' `Runs.teachers`)
  variables: list           # per teacher: its variables (R, ...), sharded (for term init)
  host_variables: list | None = None   # the same on the host (numpy; every run, every process)


def prepare(config: mc.ConfigDict, runs: list, test_subjects: list, num_classes: int,
            data: Any, run_inputs: Any, mesh: Any, log: Callable[[str], None]) -> Prepared:
  """Load every teacher's variables for `runs`, cache what fits, and build the step's
  `teacher_outputs` (`data`, `run_inputs`: the dataset and the runs' inputs,
  `jkd.engine.train.Data` and `Runs`)."""
  x = data.x
  from jkd import distill
  ts = build(config, num_classes)
  needs = distill.teacher_needs(config.loss)
  plan, lines = cache_plan(ts, config, int(x.shape[0]), len(runs), tuple(x.shape[1:]),
                           num_classes, needs)
  for line in lines:
    log(line)
  inputs, variables, host = [], [], []
  for t, cached in zip(ts, plan):
    host.append(load(t, runs, test_subjects, num_classes))
    v = parallel.shard_runs(host[-1], mesh)
    variables.append(v)
    if cached:
      fn = make_cache_fn(t, needs, config.train.eval_batch_size, mesh)
      inputs.append(fn(v, data, run_inputs))
    else:
      inputs.append(v)
  return Prepared(ts, make_teacher_outputs(ts, plan, needs), inputs, variables, host)
