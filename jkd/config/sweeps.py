"""Sweeps: which keys may be swept, and the sweep points of a config.

`sweep` mirrors the config's structure, e.g. `config.sweep = {'optim': {'lr': (0.05, 0.01)}}` or
`--config.sweep='{"optim": {"lr": [0.05, 0.01]}}'`; its leaves must be per-run keys
(`per_run_keys`: numbers the step reads as traced values), and their product is trained in one
vmapped program. Keys under `sweep.zip` are taken together. A key that decides the program's
structure cannot be swept: every sweep point would train the same.
"""

from __future__ import annotations

import numbers

import ml_collections as mc

from jkd.config.schema import ConfigError, flat, get


def teacher_names(config: mc.ConfigDict) -> tuple[str, ...]:
  """The stage's teachers in weight order (`distill.teachers`); none outside a distillation stage."""
  return tuple(config.distill.teachers) if "distill" in config else ()


def per_run_keys(config: mc.ConfigDict) -> list[str]:
  """Dotted keys whose values travel as per-run arrays through the step and change what it
  computes: the only sweepable ones. Each is declared next to the code that reads it: the
  optimiser's (`jkd.engine.optim.per_run_keys`) and the listed terms' (`jkd.distill.per_run_keys`)."""
  from jkd import distill
  from jkd.engine import optim   # noqa: PLC0415 - both import jax
  return optim.per_run_keys(config.optim) + distill.per_run_keys(config.loss,
                                                                 teacher_names(config))


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
  if term and term not in config.loss.terms:
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
