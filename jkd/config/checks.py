"""Checks of a config's values that the type system cannot make, each a one-line ConfigError.

`validate(config)` checks one engine config (a model trained alone or one pipeline stage): the
choices, the ranges of numeric keys and of their swept values, the model, the data source's keys
and the loss terms with the stage's teachers. `check_fit` checks the config against the loaded
data. `jkd.preflight` runs them, with the workdir's and the teachers' checks, before anything is
written or trained.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import ml_collections as mc

from jkd.config.schema import (MATMUL_PRECISIONS, OPTIMIZERS, SCHEDULES, ConfigError, get,
                               seeds)
from jkd.config.sweeps import sweep, teacher_names


def _choice(key: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")


# The values a numeric key may take: '> a', '>= a' or an interval '[a, b)', '(a, b]', ... A key
# that a config lacks is skipped (the loss keys come from `jkd.distill.ranges`).
# Swept values are checked too.
RANGES = {
    "train.epochs": ">= 1", "train.batch_size": ">= 1", "train.eval_batch_size": ">= 1",
    "train.checkpoint_every": ">= 1", "train.keep_checkpoints": ">= 1",
    "optim.lr": "> 0", "optim.momentum": "[0, 1)", "optim.weight_decay": ">= 0",
    "optim.b1": "[0, 1)", "optim.b2": "[0, 1)", "optim.eps": "> 0", "optim.gamma": "(0, 1]",
    "optim.step_size": ">= 1", "optim.warmup_epochs": ">= 0", "optim.backbone_lr_mult": ">= 0",
    "augment.jitter": ">= 0", "augment.scaling": ">= 0", "augment.magnitude_warp": ">= 0",
    "augment.time_warp": ">= 0", "augment.knots": ">= 1", "augment.permutation": ">= 0",
    "augment.mixup": ">= 0", "augment.cutmix": ">= 0",
}


def in_range(value: float, spec: str) -> bool:
  """Whether `value` lies in `spec` (a RANGES entry); NaN and inf never do."""
  if not math.isfinite(value):
    return False
  if spec.startswith(">"):
    low = float(spec.lstrip(">= "))
    return value >= low if spec.startswith(">=") else value > low
  low, high = (float(v) for v in spec[1:-1].split(","))
  return ((value >= low) if spec[0] == "[" else (value > low)) and (
      (value <= high) if spec[-1] == "]" else (value < high))


def _range_error(key: str, value: Any, spec: str, swept: bool = False) -> ConfigError:
  where = f"a value {value!r} of sweep.{key}" if swept else f"{key}={value!r}"
  bound = f"in {spec}" if spec[0] in "[(" else spec
  return ConfigError(f"{where} is out of range: {key} must be {bound}; set "
                     f"--config.{'sweep' if swept else key} accordingly")


def _check_ranges(config: mc.ConfigDict, swept: dict[str, tuple[float, ...]]) -> None:
  from jkd import distill   # noqa: PLC0415
  ranges = RANGES | distill.ranges(config.loss, teacher_names(config))
  for key, spec in ranges.items():
    try:
      value = get(config, key)
    except ConfigError:
      continue
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not in_range(value, spec):
      raise _range_error(key, value, spec)
    for v in swept.get(key, ()):
      if not in_range(v, spec):
        raise _range_error(key, v, spec, swept=True)
  if "alpha" in config.loss:   # a KD stage's α: < 0 = off (per-teacher weights), else in [0, 1]
    for v in (config.loss.alpha, *swept.get("loss.alpha", ())):
      if v > 1 or not math.isfinite(v):
        raise ConfigError(f"loss.alpha={v!r} is out of range: the second teacher's weight α must "
                          "be in [0, 1] (or -1: off); set --config.loss.alpha accordingly")
  milestones = tuple(config.optim.get("milestones", ()))
  if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones) or list(
      milestones) != sorted(set(milestones)):
    raise ConfigError(f"optim.milestones={milestones!r} must be increasing epochs >= 1, e.g. "
                      "--config.optim.milestones='(60,120,160)'")
  aug = config.get("augment")
  if aug is not None and "rotation" in aug:
    groups = tuple(aug.get("sensor_groups", ()))
    if any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in groups):
      raise ConfigError(f"augment.sensor_groups={groups!r} must be channel indices >= 0 (the first "
                        "channel of each xyz triple)")
    if aug.rotation and not groups:
      raise ConfigError("augment.rotation=True needs augment.sensor_groups, the first channel of "
                        "each xyz triple, e.g. --config.augment.sensor_groups='(0,3)'")


# The model section's numbers (the engine's model and every teacher's): what jkd.images needs.
MODEL_RANGES = {"image_size": ">= 1", "pi.spread": ">= 0", "pi.threshold": ">= 0"}


def _check_model(model: mc.ConfigDict, prefix: str = "model") -> None:
  """The model section (`prefix`: where it is, e.g. teachers.image.model) as `jkd.models.create`
  and `jkd.images` accept it, before any data loads."""
  import jkd.models   # noqa: PLC0415 - flax, only once a config is validated
  _choice(f"{prefix}.ndim", model.get("ndim", 1), (1, 2))
  _choice(f"{prefix}.image", model.get("image", "gaf"), ("gaf", "pi"))
  for key, spec in MODEL_RANGES.items():
    try:
      value = get(model, key)
    except ConfigError:
      continue
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not in_range(value, spec):
      raise _range_error(f"{prefix}.{key}", value, spec)
  if "pi" in model:
    births = tuple(model.pi.birth_range)
    if len(births) != 2 or not float(births[1]) > 0 or not float(births[0]) < float(births[1]):
      raise ConfigError(f"{prefix}.pi.birth_range={births!r} must be (low, high) with high > 0 "
                        f"and low < high, e.g. --config.{prefix}.pi.birth_range='(-1.0,1.0)'")
  ndim = model.get("ndim", 1)
  kwargs = model.get("kwargs", mc.ConfigDict())
  kwargs = kwargs.to_dict() if isinstance(kwargs, mc.ConfigDict) else dict(kwargs)
  for key, extra in ((f"{prefix}.name", {}), (f"{prefix}.kwargs", kwargs)):
    try:
      jkd.models.create(model.name, num_classes=2, ndim=ndim, **extra)
    except (TypeError, ValueError) as e:
      hint = (f"--config.{key}" if key.endswith(".name") else
              f"--config.{key}='{{\"dropout\": 0.1}}' (a JSON dict)")
      raise ConfigError(f"{key}: {' '.join(str(e).split())}; set {hint}") from None


def _check_teachers(config: mc.ConfigDict) -> None:
  """Every declared teacher's entry (`jkd.engine.teachers.spec`): which checkpoint, and its model."""
  for name, t in (config.get("teachers", None) or {}).items():
    _choice(f"teachers.{name}.which", t.which, ("last", "best"))
    if isinstance(t.epoch, bool) or not isinstance(t.epoch, int) or t.epoch < 0:
      raise ConfigError(f"teachers.{name}.epoch={t.epoch!r} must be an epoch >= 0 (0: the last)")
    _check_model(t.model, f"teachers.{name}.model")


def validate(config: mc.ConfigDict, check_sweep: bool = True) -> None:
  """Checks values the type system cannot; raises ConfigError with a one-line message.

  `check_sweep=False`: not the sweep (a pipeline's top level, whose sweep is its KD stage's)."""
  import jkd.data   # noqa: PLC0415
  _choice("optim.name", config.optim.name, OPTIMIZERS)
  _choice("optim.schedule", config.optim.schedule, SCHEDULES)
  _choice("train.init_which", config.train.init_which, ("last", "best"))
  _choice("train.matmul_precision", config.train.matmul_precision, MATMUL_PRECISIONS)
  if not config.data.name:
    raise ConfigError("data.name is empty; start from a file in configs/ or set --config.data.name")
  try:
    jkd.data.check_config(config.data)
  except jkd.data.DataError as e:
    raise ConfigError(str(e)) from None
  seeds(config)
  _check_ranges(config, sweep(config) if check_sweep else {})
  _check_model(config.model)
  _check_teachers(config)
  _check_loss(config)


def _check_loss(config: mc.ConfigDict) -> None:
  """The listed loss terms and their settings, with the stage's teachers (none outside a
  distillation stage: then only terms that read no teacher, such as 'ce' and 'focal')."""
  from jkd import distill   # noqa: PLC0415
  names = teacher_names(config)
  pairs = [(t, config.teachers[t].model) for t in names if t in config.get("teachers", {})]
  try:
    distill.check(config.loss, pairs, config.model, config.train.epochs,
                  distilling="distill" in config)
  except distill.TermError as e:
    raise ConfigError(str(e)) from None


def check_fit(config: mc.ConfigDict, channels: int, length: int, train_counts: Any) -> None:
  """What the config asks of the data: a full batch in every fold, augmentation channels that
  exist. `train_counts`: training windows per fold."""
  batch = int(config["train"]["batch_size"])
  small = [f for f, n in enumerate(train_counts) if n < batch]
  if small:
    raise ConfigError(f"folds {small} have fewer training windows ({min(train_counts)} in the "
                      f"smallest) than train.batch_size={batch}; lower --config.train.batch_size")
  aug = config.get("augment") or {}
  groups = tuple(aug.get("sensor_groups", ()))
  if aug.get("rotation") and groups and max(groups) + 3 > channels:
    raise ConfigError(f"augment.sensor_groups={groups!r}: each names the first of 3 channels, but "
                      f"the data have {channels} (0..{channels - 1}); fix "
                      "--config.augment.sensor_groups")
  if aug.get("permutation", 0) >= length:
    raise ConfigError(f"augment.permutation={aug['permutation']} segments do not fit windows of "
                      f"{length} samples; use fewer (--config.augment.permutation)")
