"""The experiment config: engine defaults, validation, and one-line messages for bad keys.

Every experiment file in `configs/` starts from `base(data_name)` and changes what it needs. The
config is locked once loaded; an unknown key or a wrong type is reported as one line naming the key
and the closest valid keys (`ConfigError`).

`train.seeds` is either a number of trials (seeds `train.seed + i`, i < n; the lab's base seed is
1234) or an explicit list of seeds: `--config.train.seeds=3` or `--config.train.seeds='(1,7,42)'`.
`sweep` mirrors the config's structure, e.g. `config.sweep = {'optim': {'lr': (0.05, 0.01)}}` or
`--config.sweep='{"optim": {"lr": [0.05, 0.01]}}'`; its leaves must be numeric `optim.*` or `loss.*`
keys, and their product is trained in one vmapped program.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import numbers
from typing import Any, Iterator

import ml_collections as mc

from jkd import augment

# Numeric keys under these sections become per-run arrays and may be swept.
SWEEPABLE_SECTIONS = ("optim", "loss")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("lab", "constant", "step", "multistep", "cosine")
MATMUL_PRECISIONS = ("default", "highest")


class ConfigError(ValueError):
  """A bad config key or value; the message is one line naming the key and the fix."""


def base(data: mc.ConfigDict | None = None) -> mc.ConfigDict:
  """Engine defaults (REFERENCE §5: SGD 0.9, wd 1e-4, batch 128, 200 epochs, seed 1234)."""
  c = mc.ConfigDict()
  c.data = data if data is not None else mc.ConfigDict({"name": "", "path": ""})
  c.model = mc.ConfigDict({
      "name": "wrn16_1",
      "ndim": 1,                 # 2: the model sees a GAF image per channel of the window
      "image_size": 64,          # GAF side S (ndim 2)
      "gaf_method": "summation",
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
  keys = [k for k, _ in flat(config)]
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


def sweep(config: mc.ConfigDict) -> dict[str, tuple[float, ...]]:
  """The swept keys (dotted) and their values, checked against the config."""
  out = {}
  for key, values in flat(config.sweep):
    if isinstance(values, (mc.ConfigDict, dict)):
      continue
    if not key.startswith(tuple(s + "." for s in SWEEPABLE_SECTIONS)):
      raise ConfigError(f"sweep.{key}: only numeric {'/'.join(SWEEPABLE_SECTIONS)}.* keys can be "
                        "swept in one program; run other settings as separate experiments")
    current = get(config, key)
    if isinstance(current, bool) or not isinstance(current, numbers.Real):
      raise ConfigError(f"sweep.{key}: {key} is {current!r}, not a number; only numbers are swept")
    if isinstance(values, (int, float)):
      values = (values,)
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                             for v in values):
      raise ConfigError(f"sweep.{key} must be a non-empty list of numbers, got {values!r}")
    out[key] = tuple(float(v) for v in values)
  return out


def numeric_hparams(config: mc.ConfigDict) -> dict[str, float]:
  """Every numeric optim.*/loss.* key: these travel as per-run arrays through the step."""
  out = {}
  for section in SWEEPABLE_SECTIONS:
    for key, v in flat(config[section], section + "."):
      if isinstance(v, numbers.Real) and not isinstance(v, bool):
        out[key] = float(v)
  return out


def _choice(key: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")


def validate(config: mc.ConfigDict) -> None:
  """Checks values the type system cannot; raises ConfigError with a one-line message."""
  _choice("optim.name", config.optim.name, OPTIMIZERS)
  _choice("optim.schedule", config.optim.schedule, SCHEDULES)
  _choice("model.ndim", config.model.ndim, (1, 2))
  _choice("loss.name", config.loss.name, ("ce", "focal"))
  _choice("train.init_which", config.train.init_which, ("last", "best"))
  _choice("train.matmul_precision", config.train.matmul_precision, MATMUL_PRECISIONS)
  for key in ("train.epochs", "train.batch_size", "train.eval_batch_size", "train.checkpoint_every",
              "train.keep_checkpoints"):
    if get(config, key) < 1:
      raise ConfigError(f"{key} must be >= 1, got {get(config, key)}")
  if not config.data.name:
    raise ConfigError("data.name is empty; start from a file in configs/ or set --config.data.name")
  seeds(config)
  sweep(config)


def load_file(path: str) -> mc.ConfigDict:
  """`get_config()` of a config file, `path` as --config takes it ('file.py' or 'file.py:arg')."""
  file, *arg = path.split(":", 1)
  spec = importlib.util.spec_from_file_location("jkd_config_file", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def to_json(config: mc.ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)
