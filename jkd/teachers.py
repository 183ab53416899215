"""Frozen teachers of the `student_kd` stage: their variables per run, their forward pass in the step.

The stage config's `teachers` section names the teachers (`order`, e.g. ('signal', 'image')) and,
per teacher, its model (`model`, `ndim`, `image_size`, `gaf_method`, `kwargs`) and `source`:

* a jkd workdir (a teacher stage, e.g. `W/teacher_signal`): run (fold, seed) of the student is
  taught by the teacher run with the same fold and seed (`which`: its 'last' or 'best' variables);
* a lab PyTorch checkpoint path with placeholders, e.g. `/ckpt/sig_fold{fold}_seed{seed}.pth.tar`
  (`{fold}` 0-based fold index, `{seed}`, `{subject}` the fold's first test subject), converted
  on the fly by `jkd.convert.load_torch_wrn` (architecture checked against the config).

Teachers run in eval mode (BatchNorm running statistics, no dropout) under `stop_gradient`, on the
same augmented window the student sees (2-D teachers on its GAF image, computed in the step).
When no augmentation is active a teacher's outputs never change, so they are computed once per
run over every window (`cache`) and the step only gathers them — for each teacher whose logits and
needed feature maps fit in `teachers.cache_gb` (the image teacher first: it is the costly one);
the others run forward in the step. `prepare` logs which.
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
from jkd import augment as augment_lib
from jkd import checkpoint, convert, gaf, kd, parallel
from jkd.data import normalize

Array = jax.Array


def defaults() -> mc.ConfigDict:
  """`teachers` section of the student_kd stage config (the pipeline fills it in)."""
  return mc.ConfigDict({"order": ("signal", "image"), "cache": True, "cache_gb": 2.0,
                        "signal": spec_defaults(), "image": spec_defaults(ndim=2)})


def spec_defaults(ndim: int = 1) -> mc.ConfigDict:
  return mc.ConfigDict({"model": "wrn16_1", "ndim": ndim, "image_size": 64,
                        "gaf_method": "summation", "kwargs": mc.ConfigDict(), "source": "",
                        "which": "last"})


@dataclasses.dataclass(frozen=True)
class Teacher:
  name: str
  model: nn.Module
  spec: mc.ConfigDict

  def input(self, x: Array) -> Array | gaf.GafFactors:
    """The teacher's input from normalised windows (B, L, C): the windows or their GAF images
    (as factors: see `jkd.gaf.GafFactors`)."""
    if self.spec.ndim == 2:
      return gaf.gaf_factors(x, self.spec.image_size, method=self.spec.gaf_method)
    return x

  def forward(self, variables: Any, x: Array, layers: tuple[int, ...]) -> tuple[Array, tuple]:
    """(logits, stage outputs `layers`) in eval mode, without gradient."""
    variables = jax.lax.stop_gradient(variables)
    logits, features = self.model.apply(variables, self.input(x), train=False)
    out = (logits, tuple(features[i - 1] for i in layers))
    return jax.lax.stop_gradient(out)


def build(config: mc.ConfigDict, num_classes: int) -> list[Teacher]:
  t = config.teachers
  if not t.order:
    raise ValueError("teachers.order is empty; the student_kd stage needs at least one teacher")
  out = []
  for name in t.order:
    if name not in t:
      raise ValueError(f"teachers.order names {name!r} but teachers.{name} is not configured")
    s = t[name]
    out.append(Teacher(name, jkd.models.create(s.model, num_classes=num_classes, ndim=s.ndim,
                                               **s.kwargs.to_dict()), s))
  return out


# ----------------------------------------------------------------------------- variables per run

def is_torch_source(source: str) -> bool:
  return source.endswith((".pth.tar", ".pth", ".pt", ".tar")) or "{fold}" in source


def load(teacher: Teacher, runs: list, test_subjects: list, num_classes: int) -> Any:
  """The teacher's variables for every run (leading runs axis, numpy)."""
  src = teacher.spec.source
  if not src:
    raise ValueError(f"teachers.{teacher.name}.source is empty: name a teacher workdir or a "
                     "'.pth.tar' path with {fold}")
  if is_torch_source(src):
    return _load_torch(teacher, runs, test_subjects, num_classes)
  return _load_workdir(teacher, runs)


def _load_workdir(teacher: Teacher, runs: list) -> Any:
  src = teacher.spec.source
  path = os.path.join(src, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"teachers.{teacher.name}.source={src!r} is not a jkd workdir (no "
                            "config.json); train the teacher stage first or fix the path")
  with open(path) as f:
    model = json.load(f)["model"]
  if (model["name"], model["ndim"]) != (teacher.spec.model, teacher.spec.ndim):
    raise ValueError(f"teachers.{teacher.name}: {src} holds {model['name']} (ndim "
                     f"{model['ndim']}) but the config says {teacher.spec.model} (ndim "
                     f"{teacher.spec.ndim}); make them agree")
  idx = [checkpoint.run_index(src, (r.fold, r.seed)) for r in runs]
  return checkpoint.restore_runs(src, idx, teacher.spec.which)


def _load_torch(teacher: Teacher, runs: list, test_subjects: list, num_classes: int) -> Any:
  loaded: dict[str, Any] = {}
  out = []
  for r in runs:
    subjects = list(test_subjects[r.fold])
    path = teacher.spec.source.format(fold=r.fold, seed=r.seed,
                                      subject=subjects[0] if subjects else "")
    if path not in loaded:
      if not os.path.isfile(path):
        raise FileNotFoundError(f"teachers.{teacher.name}: {path} (fold {r.fold}, seed {r.seed}) "
                                f"does not exist; check teachers.{teacher.name}.source="
                                f"{teacher.spec.source!r}")
      variables, info = convert.load_torch_wrn(path, ndim=teacher.spec.ndim, return_info=True)
      if (info.model, info.num_classes) != (teacher.spec.model, num_classes):
        raise ValueError(f"teachers.{teacher.name}: {path} holds {info.model} with "
                         f"{info.num_classes} classes, the config says {teacher.spec.model} "
                         f"with {num_classes}; fix teachers.{teacher.name}.model or the path")
      loaded[path] = variables
    out.append(loaded[path])
  return jax.tree.map(lambda *a: np.stack([np.asarray(v, np.float32) for v in a]), *out)


# ----------------------------------------------------------------------------- cache

def output_bytes(teacher: Teacher, window: tuple[int, ...], num_classes: int,
                 layers: tuple[int, ...]) -> int:
  """Bytes of one window's cached outputs (logits and the needed feature maps)."""
  variables = jax.eval_shape(lambda: teacher.model.init(
      jax.random.PRNGKey(0), teacher.input(jnp.zeros((1, *window))), train=False))
  logits, feats = jax.eval_shape(lambda v: teacher.forward(v, jnp.zeros((1, *window)), layers),
                                 variables)
  return 4 * (num_classes + sum(int(np.prod(f.shape[1:])) for f in feats))


def cache_plan(teachers: list[Teacher], config: mc.ConfigDict, windows: int, runs: int,
               window: tuple[int, ...], num_classes: int) -> tuple[list[bool], list[str]]:
  """Which teachers to cache, and a log line per teacher saying why."""
  layers = kd.needed_layers(config.loss)
  if augment_lib.is_active(config.augment) or not config.teachers.cache:
    why = ("augmentation is active" if config.teachers.cache else "teachers.cache is off")
    return [False] * len(teachers), [f"teacher {t.name}: runs forward in every step ({why})"
                                     for t in teachers]
  budget = config.teachers.cache_gb * 2 ** 30
  plan, lines = [False] * len(teachers), [""] * len(teachers)
  for i in sorted(range(len(teachers)), key=lambda i: -teachers[i].spec.ndim):
    t = teachers[i]
    size = output_bytes(t, window, num_classes, layers) * windows * runs
    what = "logits" + (f" and stage {layers} outputs" if layers else "")
    if size <= budget:
      plan[i], budget = True, budget - size
      lines[i] = f"teacher {t.name}: {what} cached once per run ({size / 2 ** 20:.0f} MiB)"
    else:
      lines[i] = (f"teacher {t.name}: runs forward in every step ({what} would take "
                  f"{size / 2 ** 30:.1f} GiB > teachers.cache_gb left)")
  return plan, lines


def make_cache_fn(teacher: Teacher, layers: tuple[int, ...], batch: int, mesh: Any = None
                  ) -> Callable:
  """`fn(variables (R, ...), x (N, L, C), mean (R, C), std (R, C)) -> outputs (R, N, ...)`.

  A device's runs go one after another (`lax.map`), so memory holds one run's batch at a time."""
  def one(variables, x, mean, std):
    n = x.shape[0]
    pad = -n % batch
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(
        -1, batch, *x.shape[1:])
    out = jax.lax.map(lambda xb: teacher.forward(variables, normalize.apply(xb, mean, std),
                                                 layers), xp)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)
  def local(variables, x, mean, std):
    return jax.lax.map(lambda v: one(v[0], x, v[1], v[2]), (variables, mean, std))
  if mesh is not None:
    local = parallel.per_device(local, mesh, "R-RR", "R")
  return jax.jit(local)


# ----------------------------------------------------------------------------- in the step

def make_guide(teachers: list[Teacher], cached: list[bool], layers: tuple[int, ...]) -> Callable:
  """`guide(aux, xb, idx) -> [(logits, features)] per teacher` for ONE run (vmapped by the step).

  `aux[i]` is teacher i's variables, or its cached outputs over every window when `cached[i]`.
  """
  def guide(aux, xb, idx):
    out = []
    for t, c, a in zip(teachers, cached, aux):
      out.append(jax.tree.map(lambda v: v[idx], a) if c else t.forward(a, xb, layers))
    return out
  return guide


# ----------------------------------------------------------------------------- engine extension

class Distillation:
  """What the engine needs for the student_kd stage (`jkd.setup.build(config, extension=...)`):
  the KD objective, and per run the teachers' variables or cached outputs plus the step's guide."""

  def __init__(self, config: mc.ConfigDict, log: Callable[[str], None] = print):
    self.config, self.log = config, log

  def objective(self, config: mc.ConfigDict) -> Callable:
    return kd.make(config)

  def attach(self, s) -> tuple[Callable, list]:
    """(guide, aux) for setup `s`: aux sharded along runs like the train state."""
    config = self.config
    ts = build(config, s.num_classes)
    layers = kd.needed_layers(config.loss)
    window = tuple(s.x.shape[1:])
    plan, lines = cache_plan(ts, config, int(s.x.shape[0]), s.num_runs, window, s.num_classes)
    for line in lines:
      self.log(line)
    aux = []
    for t, cached in zip(ts, plan):
      variables = parallel.shard_runs(load(t, s.runs, s.folds.test_subjects, s.num_classes), s.mesh)
      if cached:
        fn = make_cache_fn(t, layers, config.train.eval_batch_size, s.mesh)
        variables = fn(variables, s.x, s.inputs.mean, s.inputs.std)
      aux.append(variables)
    return make_guide(ts, plan, layers), aux
