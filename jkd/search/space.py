"""A search's space over per-run keys, its checks, and its points drawn through an Optuna trial.

`config.search.space` mirrors the config's structure, as `sweep` does; each leaf is a range:

  ("log", lo, hi)        log-uniform float in [lo, hi], 0 < lo < hi
  ("uniform", lo, hi)    uniform float in [lo, hi], lo < hi
  ("int", lo, hi)        integer in [lo, hi], lo <= hi
  ("choice", v1, v2 ...) one of the listed numbers (each once)
  ("simplex",)           every key marked so forms ONE simplex: non-negative values summing to 1
                         (e.g. teacher weights), drawn uniformly (flat Dirichlet) from one
                         uniform(0, 1) per key; at least two keys

Only per-run keys may be searched, the same rule as `sweep` (`jkd.config.sweeps.sweep`): the
points train as the runs' sweep values. `check` raises `jkd.config.ConfigError` (one line) for the
first problem; nothing here imports Optuna or JAX except `suggest`'s caller.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import ml_collections as mc

from jkd import config as config_lib

KINDS = ("log", "uniform", "int", "choice", "simplex")
SAMPLERS = ("tpe", "random", "qmc")


@dataclasses.dataclass(frozen=True)
class Dim:
  key: str                 # dotted config key
  kind: str                # one of KINDS
  args: tuple              # (lo, hi) or the choices; () for a simplex key


def default_config(**kw) -> mc.ConfigDict:
  """A `search` section: `points` points drawn by `sampler` (seeded by `seed`) from `space`;
  `halving.rungs`: the epochs after which the worst points stop (() = no halving), keeping the
  best 1/`halving.eta`; `waves`: the points are asked, trained (with halving) and told in this
  many waves, so that an adaptive sampler (TPE) models the finished waves when it draws the next;
  `storage`: an Optuna storage URL shared by several jobs ('' = the workdir's search.db, SQLite);
  `study`: the study's name in that storage."""
  c = mc.ConfigDict({"space": mc.ConfigDict(), "points": 27, "sampler": "tpe", "seed": 0,
                     "waves": 3, "halving": mc.ConfigDict({"rungs": (), "eta": 3}),
                     "storage": "", "study": "jkd"})
  c.update(kw)
  return c


def lab_kd(beta: tuple = (10, 1000), temperature: tuple = (1, 8)) -> dict:
  """The space of the lab's KD objective (`jkd.pipeline.lab_loss`): λ as the ce/kd weights
  (1 − λ, λ) on a simplex, α (the second teacher's weight) uniform in 0–1, β (SP) and T
  log-uniform in the given ranges."""
  return {"loss": {"ce": {"weight": ("simplex",)},
                   "kd": {"weight": ("simplex",), "temperature": ("log", *temperature)},
                   "alpha": ("uniform", 0, 1), "sp": {"weight": ("log", *beta)}}}


def is_search(config: mc.ConfigDict) -> bool:
  return "search" in config and bool(config.search.get("space"))


def _num(v: Any) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def dims(config: mc.ConfigDict) -> list[Dim]:
  """The space's dimensions, each range checked (not yet against the config: `check`)."""
  out = []
  for key, spec in config_lib.flat(config.search.space):
    if isinstance(spec, (mc.ConfigDict, dict)):
      continue
    where = f"search.space.{key}={spec!r}"
    if isinstance(spec, str):
      spec = (spec,)
    if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in KINDS:
      raise config_lib.ConfigError(f"{where}: a range is (kind, ...) with kind one of "
                                   f"{', '.join(KINDS)}, e.g. ('log', 1, 8)")
    kind, args = spec[0], tuple(spec[1:])
    if kind == "simplex":
      if args:
        raise config_lib.ConfigError(f"{where}: a simplex key takes no bounds, write ('simplex',)")
    elif kind == "choice":
      if not args or not all(_num(a) for a in args):
        raise config_lib.ConfigError(f"{where}: list at least one number to choose from")
      if len(set(map(float, args))) < len(args):
        raise config_lib.ConfigError(f"{where} repeats a value; list each choice once")
    else:
      if len(args) != 2 or not all(_num(a) for a in args):
        raise config_lib.ConfigError(f"{where}: {kind} takes two numbers (lo, hi)")
      lo, hi = args
      if kind == "int" and not all(float(a).is_integer() for a in args):
        raise config_lib.ConfigError(f"{where}: int bounds must be integers")
      if (lo > hi) if kind == "int" else (lo >= hi):
        raise config_lib.ConfigError(f"{where} is an empty range (lo must be "
                                     f"{'<=' if kind == 'int' else '<'} hi)")
      if kind == "log" and lo <= 0:
        raise config_lib.ConfigError(f"{where}: a log range needs 0 < lo")
    out.append(Dim(key, kind, args))
  if not out:
    raise config_lib.ConfigError("search.space is empty; give at least one key's range, e.g. "
                                 "{'loss': {'alpha': ('uniform', 0, 1)}}")
  simplex = [d for d in out if d.kind == "simplex"]
  if len(simplex) == 1:
    raise config_lib.ConfigError(f"search.space.{simplex[0].key}: a simplex needs at least two "
                                 "keys marked ('simplex',) (their values sum to 1)")
  return out


def _bounds(d: Dim) -> tuple[float, float]:
  if d.kind == "simplex":
    return 0.0, 1.0
  if d.kind == "choice":
    return float(min(d.args)), float(max(d.args))
  return float(d.args[0]), float(d.args[1])


def check(config: mc.ConfigDict) -> None:
  """Everything a search's section can get wrong, before training: one-line ConfigError."""
  s = config.search
  if dict(config_lib.flat(config.get("sweep", {}))):
    raise config_lib.ConfigError("both sweep and search are set; a search's points are its sweep: "
                                 "drop one (e.g. --config.sweep='{}')")
  if not (isinstance(s.points, int) and s.points >= 1):
    raise config_lib.ConfigError(f"search.points={s.points!r} must be a positive integer")
  if s.sampler not in SAMPLERS:
    raise config_lib.ConfigError(f"search.sampler={s.sampler!r}; choose one of "
                                 f"{', '.join(SAMPLERS)}")
  waves(s)
  data = config.data
  if not (int(data.get("num_val_subjects", 0) or 0) > 0 or tuple(data.get("val_subjects", ()))):
    raise config_lib.ConfigError("a search chooses on validation subjects and there are none; set "
                                 "--config.data.num_val_subjects=1 (or data.val_subjects), never "
                                 "select on test")
  rungs(config)
  ds = dims(config)
  # The per-run rule and the keys' ranges, exactly as a sweep of each range's ends is checked.
  probe = mc.ConfigDict(config.to_dict())
  probe.sweep = mc.ConfigDict({config_lib.ZIP: {}})
  lo_hi = [_bounds(d) for d in ds]
  if all(lo == hi for lo, hi in lo_hi):
    lo_hi = [(lo,) for lo, _ in lo_hi]
  for d, values in zip(ds, lo_hi):
    set_key(probe.sweep[config_lib.ZIP], d.key, list(values))
  try:
    config_lib.sweep(probe)
    config_lib.validate(probe)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(_as_search(str(e))) from None
  if all(d.kind in ("int", "choice") for d in ds):
    size = math.prod(len(d.args) if d.kind == "choice" else int(d.args[1]) - int(d.args[0]) + 1
                     for d in ds)
    if size < s.points:
      raise config_lib.ConfigError(f"search.points={s.points}: the space holds {size} distinct "
                                   "points; lower search.points (or sweep them all)")


def set_key(tree: mc.ConfigDict, key: str, value: Any) -> None:
  *path, last = key.split(".")
  for p in path:
    if p not in tree:
      tree[p] = mc.ConfigDict()
    tree = tree[p]
  tree[last] = value


def _as_search(msg: str) -> str:
  """A sweep check's message about the probe, in the search's words."""
  msg = msg.replace(f"sweep.{config_lib.ZIP}.", "search.space.").replace("sweep.", "search.space.")
  return (msg.replace("drop the sweep", "drop it from search.space")
          .replace("sweep points", "search points").replace("set --config.sweep accordingly",
                                                              "narrow the range in search.space"))


def rungs(config: mc.ConfigDict) -> list[int]:
  """The epochs after which each rung's program ends: the halving rungs, then train.epochs."""
  epochs = int(config.train.epochs)
  h = config.search.halving
  raw = tuple(h.rungs)
  if raw and raw[-1] == epochs:
    raw = raw[:-1]
  if not all(isinstance(r, int) and not isinstance(r, bool) for r in raw) or any(
      not 0 < a < b for a, b in zip(raw, (*raw[1:], epochs))):
    raise config_lib.ConfigError(f"search.halving.rungs={tuple(h.rungs)!r} must be increasing "
                                 f"epochs in 1 .. train.epochs-1={epochs - 1}")
  if raw and not (isinstance(h.eta, int) and h.eta >= 2):
    raise config_lib.ConfigError(f"search.halving.eta={h.eta!r} must be an integer >= 2 (the "
                                 "best 1/eta of the points continue after each rung)")
  return [*raw, epochs]


def waves(s: mc.ConfigDict) -> list[int]:
  """The points of each wave of a `search` section (`waves` as equal as may be, larger first).

  A wave's points are asked together, trained as programs (its rungs) and told before the next
  wave is asked. TPE models told trials only: with one wave every point would come from its
  random start-up, a TPE search that is a random one; that is refused unless the study is shared
  (`storage`, where other jobs' told trials inform it)."""
  n = s.get("waves", 1)
  if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= s.points):
    raise config_lib.ConfigError(f"search.waves={n!r} must be an integer in 1 .. search.points="
                                 f"{s.points}")
  if s.sampler == "tpe" and n == 1 and not s.storage:
    raise config_lib.ConfigError("search.sampler='tpe' with search.waves=1 draws every point before "
                                 "any is trained, i.e. at random; set search.waves >= 2 (e.g. 3) "
                                 "or search.sampler='random'")
  return [s.points // n + (w < s.points % n) for w in range(n)]


def suggest(trial: Any, ds: list[Dim]) -> dict[str, float]:
  """One point drawn through an Optuna trial (ask/tell): key -> value, simplex normalised."""
  point, simplex = {}, {}
  for d in ds:
    if d.kind == "log":
      point[d.key] = trial.suggest_float(d.key, d.args[0], d.args[1], log=True)
    elif d.kind == "uniform":
      point[d.key] = trial.suggest_float(d.key, d.args[0], d.args[1])
    elif d.kind == "int":
      point[d.key] = float(trial.suggest_int(d.key, int(d.args[0]), int(d.args[1])))
    elif d.kind == "choice":
      point[d.key] = float(trial.suggest_categorical(d.key, list(d.args)))
    else:
      u = trial.suggest_float(f"{d.key}~u", 1e-12, 1.0)
      simplex[d.key] = -math.log(u)            # Exp(1): normalised, a flat Dirichlet
  total = sum(simplex.values())
  for k, v in simplex.items():
    point[k] = v / total
  return {k: float(point[k]) for k in (d.key for d in ds)}
