"""The experiment config: engine defaults, validation, and one-line messages for bad keys.

Every experiment file in `configs/` starts from `base(data_name)` and changes what it needs. The
config is locked once loaded; an unknown key or a wrong type is reported as one line naming the key
and the closest valid keys (`ConfigError`).

`train.seeds` is either a number of trials (seeds `train.seed + i`, i < n; the lab's base seed is
1234) or an explicit list of seeds: `--config.train.seeds=3` or `--config.train.seeds='(1,7,42)'`.
`sweep` mirrors the config's structure, e.g. `config.sweep = {'optim': {'lr': (0.05, 0.01)}}` or
`--config.sweep='{"optim": {"lr": [0.05, 0.01]}}'`; its leaves must be per-run keys
(`per_run_keys`: numbers the step reads as traced values), and their product is trained in one
vmapped program. A key that decides the program's structure cannot be swept.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import numbers
from typing import Any, Iterator

import ml_collections as mc

from jkd import augment

# Numeric keys under these sections become per-run arrays and may be swept.
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("lab", "constant", "step", "multistep", "cosine")
MATMUL_PRECISIONS = ("default", "highest")


class ConfigError(ValueError):
  """A bad config key or value; the message is one line naming the key and the fix."""


def base(data: mc.ConfigDict | None = None) -> mc.ConfigDict:
  """Engine defaults (docs/protocol.md §5: SGD 0.9, wd 1e-4, batch 128, 200 epochs, seed 1234)."""
  c = mc.ConfigDict()
  c.data = data if data is not None else mc.ConfigDict({"name": "", "path": ""})
  c.model = mc.ConfigDict({
      "name": "wrn16_1",
      "ndim": 1,                 # 2: the model sees an image per channel of the window
      "image": "gaf",            # ndim 2: 'gaf' (jkd.gaf) or 'pi' (persistence images, jkd.pi)
      "image_size": 64,          # image side S (ndim 2)
      "gaf_method": "summation",
      # model.image='pi': persim's legacy PersImage as the lab used it (docs/persistence_images.md)
      "pi": mc.ConfigDict({"spread": 0.015, "birth_range": (-1.0, 1.0), "threshold": 0.01}),
      "kwargs": mc.ConfigDict(),  # extra jkd.models.create arguments, e.g. {'dropout': 0.1}
  })
  c.train = mc.ConfigDict({
      "epochs": 200,
      "batch_size": 128,
      "eval_batch_size": 512,
      "seeds": mc.FieldReference(1, field_type=object),   # int: number of trials; tuple: seeds
      "seed": 1234,
      "checkpoint_every": 10,    # epochs between checkpoints (the last epoch is always saved)
      "keep_checkpoints": 3,
      "keep_epochs": (),         # epochs whose checkpoints are also saved and never deleted (ESKD)
      "init_from": "",           # workdir whose (fold, seed) runs initialise this one
      "init_which": "last",      # 'last' or 'best' variables of init_from
      # float32 matmuls and convolutions: 'default' lets the hardware pick its fast mode (TF32 on
      # NVIDIA GPUs since Ampere, as PyTorch's cuDNN convolutions do); 'highest' = full float32.
      # CPUs compute full float32 either way.
      "matmul_precision": "default",
      "tensorboard": False,      # event files under W/tensorboard/ (jkd.tensorboard; tensorboardX)
  })
  c.loss = mc.ConfigDict({
      "name": "ce",              # 'ce' or 'focal'
      "label_smoothing": 0.0,
      "gamma": 2.0,              # focal
  })
  c.optim = mc.ConfigDict({
      "name": "sgd",
      "lr": 0.05,                # the schedule multiplies this; 'lab' gives 0.05/0.01/0.001/1e-4
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 1e-4,      # sgd/adam: coupled (added to the gradient); adamw: decoupled
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-8,
      "schedule": "lab",
      "milestones": (60, 120, 160),   # multistep, in epochs
      "step_size": 30,           # step, in epochs
      "gamma": 0.1,              # step/multistep factor
      "warmup_epochs": 0.0,
      "backbone_lr_mult": 1.0,   # fine-tuning: 0 freezes the backbone
      "head": "fc",              # top-level param names matching this are the head
  })
  c.augment = augment.default_config()
  c.sweep = mc.ConfigDict()
  return c


def flat(config: mc.ConfigDict | dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, leaf value) pairs of a nested config."""
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, (mc.ConfigDict, dict)) and v:
      yield from flat(v, key + ".")
    else:
      yield key, v


def closest(key: str, keys: list[str]) -> str:
  near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
  if not near:
    near = difflib.get_close_matches(key.split(".")[-1], [k.split(".")[-1] for k in keys], 3, 0.5)
    near = [k for k in keys if k.split(".")[-1] in near][:3]
  return f"; closest valid keys: {', '.join(near)}" if near else ""


def unknown_key(key: str, config: mc.ConfigDict) -> ConfigError:
  keys = [k for k, _ in flat(config) if key.startswith("sweep.") or not k.startswith("sweep.")]
  return ConfigError(f"unknown config key {key!r}{closest(key, keys)}")


def get(config: mc.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    if not isinstance(node, (mc.ConfigDict, dict)) or part not in node:
      raise unknown_key(key, config)
    node = node[part]
  return node


def seeds(config: mc.ConfigDict) -> list[int]:
  s = config.train.seeds
  if isinstance(s, bool) or not isinstance(s, (int, tuple, list)):
    raise ConfigError(f"train.seeds must be a number of trials or a list of seeds, got {s!r}")
  if isinstance(s, int):
    if s < 1:
      raise ConfigError(f"train.seeds must be >= 1 trials, got {s}")
    return [config.train.seed + i for i in range(s)]
  if not s or not all(isinstance(v, int) and not isinstance(v, bool) for v in s):
    raise ConfigError(f"train.seeds list must hold integers, got {s!r}")
  return list(s)


# The optim.* and engine loss.* keys the step reads per run (traced), given the static choices
# that decide whether a key is read at all: SGD reads momentum, Adam b1/b2/eps, the step schedules
# gamma. Every other optim key decides the program's structure (the optimiser, the schedule,
# milestones, the fine-tuning split) and cannot be swept.
def _optim_per_run(optim: mc.ConfigDict) -> list[str]:
  keys = ["lr", "weight_decay", "warmup_epochs"]
  keys += ["momentum"] if optim.name == "sgd" else ["b1", "b2", "eps"]
  keys += ["gamma"] if optim.schedule in ("step", "multistep") else []
  return [f"optim.{k}" for k in keys]


def per_run_keys(config: mc.ConfigDict) -> list[str]:
  """Dotted keys whose values travel as per-run arrays through the step and change what it
  computes: the only sweepable ones. A distillation stage (a `distill` section) reads its terms'
  per-run keys (`jkd.distill.per_run_keys`)."""
  keys = _optim_per_run(config.optim)
  if "distill" in config:
    from jkd import distill
    keys += distill.per_run_keys(config.loss, tuple(config.distill.teachers))
  else:
    keys += ["loss.label_smoothing"] if config.loss.name == "ce" else ["loss.gamma"]
  return keys


ZIP = "zip"   # sweep.zip.<keys>: lists of one length, taken together (point i = every i-th value)


def sweep(config: mc.ConfigDict) -> dict[str, tuple[float, ...]]:
  """The swept keys (dotted, `zip.` stripped) and their values, checked against the config.

  Only per-run keys are sweepable (`per_run_keys`): a key read when the program is built would
  give sweep points that differ in their label only, so sweeping it is refused. Keys under
  `sweep.zip` are zipped (e.g. the lab's three-teacher weight triples), the rest multiplied."""
  out = {}
  allowed = per_run_keys(config)
  zipped = []
  for raw, values in flat(config.sweep):
    if isinstance(values, (mc.ConfigDict, dict)):
      continue
    is_zip = raw.startswith(ZIP + ".")
    key = raw[len(ZIP) + 1:] if is_zip else raw
    current = get(config, key)
    if isinstance(current, bool) or not isinstance(current, numbers.Real):
      raise ConfigError(f"sweep.{raw}: {key} is {current!r}, not a number; only numbers are swept")
    if key not in allowed:
      _refuse_sweep(config, key)
    if key in out:
      raise ConfigError(f"sweep.{raw}: {key} is swept twice (zipped and multiplied); keep one")
    if isinstance(values, (int, float)):
      values = (values,)
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                             for v in values):
      raise ConfigError(f"sweep.{raw} must be a non-empty list of numbers, got {values!r}")
    if not is_zip and len(set(map(float, values))) < len(values):
      raise ConfigError(f"sweep.{key}={tuple(values)!r} repeats a value, so two sweep points would "
                        "be identical; list each value once")
    out[key] = tuple(float(v) for v in values)
    if is_zip:
      zipped.append(key)
  if zipped:
    lengths = {len(out[k]) for k in zipped}
    if len(lengths) > 1:
      raise ConfigError(f"sweep.zip: {', '.join(zipped)} have {sorted(lengths)} values; zipped "
                        "lists need one length")
    points = list(zip(*(out[k] for k in zipped)))
    if len(set(points)) < len(points):
      raise ConfigError(f"sweep.zip: a point of ({', '.join(zipped)}) repeats, so two sweep "
                        "points would be identical; list each once")
  return out


def sweep_points(config: mc.ConfigDict) -> list[dict[str, float]]:
  """Every sweep point: the product of the multiplied keys' values and the zipped points."""
  values = sweep(config)
  zipped = [k[len(ZIP) + 1:] for k, v in flat(config.sweep)
            if k.startswith(ZIP + ".") and not isinstance(v, (mc.ConfigDict, dict))]
  groups = [((k,), [(v,) for v in vs]) for k, vs in values.items() if k not in zipped]
  if zipped:
    groups.append((tuple(zipped), list(zip(*(values[k] for k in zipped)))))
  points = [{}]
  for keys, rows in groups:
    points = [{**p, **dict(zip(keys, row))} for p in points for row in rows]
  return points


def _refuse_sweep(config: mc.ConfigDict, key: str) -> None:
  """The one-line reason a numeric key cannot be swept (every sweep point would train the same)."""
  distill = "distill" in config
  term = key.split(".")[1] if key.startswith("loss.") and key.count(".") == 2 else ""
  if distill and term and term not in config.loss.terms:
    raise ConfigError(f"sweep.{key}: {term!r} is not in loss.terms, so every sweep point would "
                      f"train the same; add it to loss.terms or drop the sweep")
  if distill and key.startswith("teachers.") and config.loss.alpha >= 0:
    raise ConfigError(f"sweep.{key}: loss.alpha={config.loss.alpha} sets the two teachers' "
                      "weights (1 − α, α); sweep loss.alpha, or set loss.alpha=-1 to weigh them by "
                      "teachers.<name>.weight")
  if distill and key == "loss.alpha":
    raise ConfigError(f"sweep.loss.alpha: α weighs two teachers only when loss.alpha >= 0 in the "
                      f"config (it is {config.loss.alpha} with {len(config.distill.teachers)} "
                      "teachers); set it, or sweep teachers.<name>.weight")
  if distill and key.startswith("teachers."):
    raise ConfigError(f"sweep.{key}: no listed term combines teachers by their weights (e.g. "
                      "kd with weighting 'aver'), so sweep points would not differ")
  raise ConfigError(f"sweep.{key}: {key} is not read per run (it decides the program's structure, "
                    "or the optimiser or schedule chosen does not use it), so sweep points would "
                    "not differ; run each value as its own experiment")


def numeric_hparams(config: mc.ConfigDict) -> dict[str, float]:
  """The values the step reads as per-run arrays: every numeric optim key (the optimiser reads
  those of its kind) and the per-run keys (`per_run_keys`, the sweepable ones)."""
  out = {f"optim.{k}": float(v) for k, v in config.optim.items()
         if isinstance(v, numbers.Real) and not isinstance(v, bool)}
  return out | {k: float(get(config, k)) for k in per_run_keys(config)}


def _choice(key: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")


# The values a numeric key may take: '> a', '>= a' or an interval '[a, b)', '(a, b]', ... A key
# that a config lacks is skipped (a distillation stage's loss keys come from `jkd.distill.ranges`).
# Swept values are checked too.
RANGES = {
    "train.epochs": ">= 1", "train.batch_size": ">= 1", "train.eval_batch_size": ">= 1",
    "train.checkpoint_every": ">= 1", "train.keep_checkpoints": ">= 1",
    "optim.lr": "> 0", "optim.momentum": "[0, 1)", "optim.weight_decay": ">= 0",
    "optim.b1": "[0, 1)", "optim.b2": "[0, 1)", "optim.eps": "> 0", "optim.gamma": "(0, 1]",
    "optim.step_size": ">= 1", "optim.warmup_epochs": ">= 0", "optim.backbone_lr_mult": ">= 0",
    "loss.label_smoothing": "[0, 1)", "loss.gamma": ">= 0",
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
  ranges = dict(RANGES)
  if "distill" in config:
    from jkd import distill
    ranges |= distill.ranges(config.loss, tuple(config.distill.teachers))
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


def _check_model(model: mc.ConfigDict) -> None:
  """The model name (and its kwargs) as `jkd.models.create` accepts them, before any data loads."""
  import jkd.models   # noqa: PLC0415 - flax, only once a config is validated
  ndim = model.get("ndim", 1)
  kwargs = model.get("kwargs", mc.ConfigDict())
  kwargs = kwargs.to_dict() if isinstance(kwargs, mc.ConfigDict) else dict(kwargs)
  for key, extra in (("model.name", {}), ("model.kwargs", kwargs)):
    try:
      jkd.models.create(model.name, num_classes=2, ndim=ndim, **extra)
    except (TypeError, ValueError) as e:
      hint = ("--config.model.name" if key == "model.name" else
              "--config.model.kwargs='{\"dropout\": 0.1}' (a JSON dict)")
      raise ConfigError(f"{key}: {' '.join(str(e).split())}; set {hint}") from None


def validate(config: mc.ConfigDict, check_sweep: bool = True) -> None:
  """Checks values the type system cannot; raises ConfigError with a one-line message.

  `check_sweep=False`: not the sweep (a pipeline's top level, whose sweep is its KD stage's)."""
  import jkd.data   # noqa: PLC0415
  _choice("optim.name", config.optim.name, OPTIMIZERS)
  _choice("optim.schedule", config.optim.schedule, SCHEDULES)
  _choice("model.ndim", config.model.ndim, (1, 2))
  _choice("model.image", config.model.image, ("gaf", "pi"))
  if "distill" not in config:   # a distillation stage's loss is its terms (jkd.distill)
    _choice("loss.name", config.loss.name, ("ce", "focal"))
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


def rebase_data(config: mc.ConfigDict, name: str) -> list[str]:
  """Replace `config.data` (not locked yet) by source `name`'s defaults: the keys of one source
  are not another's. Returns the settings of the old section that no longer apply."""
  import jkd.data   # noqa: PLC0415
  new = jkd.data.default_config(name)
  old = config.data.to_dict()
  config.data = new
  return [f"{k}={v!r}" for k, v in old.items() if k != "name" and (k not in new or new[k] != v)]


def load_file(path: str) -> mc.ConfigDict:
  """`get_config()` of a config file, `path` as --config takes it ('file.py' or 'file.py:arg')."""
  file, *arg = path.split(":", 1)
  spec = importlib.util.spec_from_file_location("jkd_config_file", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


# Keys that change what is written around a run, never its results: a workdir trained without
# them is the same experiment (switching TensorBoard on for a trained workdir retrains nothing).
NOT_RESULTS = ("train.tensorboard",)


def same_experiment(old: dict, new: dict) -> bool:
  """Whether two resolved configs (JSON objects) train the same runs, `NOT_RESULTS` aside."""
  strip = lambda c: {k: v for k, v in flat(c) if k not in NOT_RESULTS}
  return strip(old) == strip(new)


def to_json(config: mc.ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)
