"""The config's schema: engine defaults, dotted keys, and one-line messages for bad keys.

Every experiment file in `configs/` starts from `base(data_name)` and changes what it needs. The
config is locked once loaded; an unknown key or a wrong type is reported as one line naming the key
and the closest valid keys (`ConfigError`).

`train.seeds` is either a number of trials (seeds `train.seed + i`, i < n; the lab's base seed is
1234) or an explicit list of seeds: `--config.train.seeds=3` or `--config.train.seeds='(1,7,42)'`.
The objective is `loss.terms` through the term registry (`jkd.distill`), for every stage: a model
trained alone lists `("ce",)` (or `("focal",)`), a distillation stage adds its terms.
`imports` names the user's own modules (`--import=my_terms`) that register terms; they are
imported again whenever the config is read back (resume, `--mode=eval`, `--mode=report`).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from typing import Any, Iterator

import ml_collections as mc

from jkd.engine import augment

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
      "image": "gaf",            # ndim 2: 'gaf' (jkd.images.gaf) or 'pi' (persistence images, jkd.images.pi)
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
      "tensorboard": False,      # event files under W/tensorboard/ (jkd.engine.tensorboard; tensorboardX)
  })
  c.loss = _loss_defaults()
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
  c.imports = ()                 # the user's term modules (--import), recorded for resume and report
  return c


def _loss_defaults() -> mc.ConfigDict:
  """`loss`: the listed terms (cross-entropy alone) and every registered term's section."""
  from jkd import distill   # noqa: PLC0415 - the registry imports jax; configs import this first
  return distill.loss_defaults(("ce",))


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


def diff(old: dict, new: dict) -> str:
  """The first keys where two resolved configs (JSON objects) differ, as 'key: old -> new'."""
  a, b = dict(flat(old)), dict(flat(new))
  keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:3]) + (
      f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def to_json(config: mc.ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)
