"""A search's Optuna study: opened in the workdir (SQLite) or a shared storage, its sampler, the
points each job draws (ask), and process 0's points sent to the other processes of a job.

Each trial carries the workdir whose search drew it (`OWNER`) and its point (`POINT`: dotted key ->
value), so several jobs share one study and each finds its own trials again when it resumes.
`jkd.search.halving` tells the study what it trained: every rung's validation accuracy as an
intermediate value, a stopped point PRUNED, a finished one COMPLETE with its value.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections as mc
import numpy as np

from jkd import config as config_lib
from jkd.search import space as space_lib


OWNER = "jkd_workdir"     # trial user attr: the workdir whose search drew the trial
POINT = "jkd_point"       # trial user attr: the point (dotted key -> value)


def require_optuna() -> Any:
  try:
    import optuna   # noqa: PLC0415
  except ImportError:
    raise config_lib.ConfigError("a search needs Optuna, the optional extra 'search': "
                                 "pip install -e '.[search]'") from None
  return optuna


def storage_url(config: mc.ConfigDict, workdir: str) -> str:
  return config.search.storage or f"sqlite:///{os.path.join(os.path.abspath(workdir), 'search.db')}"


def sampler(optuna: Any, s: mc.ConfigDict) -> Any:
  import warnings   # noqa: PLC0415
  if s.sampler == "random":
    return optuna.samplers.RandomSampler(seed=s.seed)
  if s.sampler == "qmc":
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")   # experimental
      return optuna.samplers.QMCSampler(seed=s.seed, scramble=True, warn_independent_sampling=False)
  # The first wave at random (its start-up); each later wave models every trial told before it
  # was asked (a pruned one ranks below the finished ones, by its last rung).
  return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=space_lib.waves(s)[0])


def open_study(config: mc.ConfigDict, workdir: str) -> Any:
  optuna = require_optuna()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna.create_study(storage=storage_url(config, workdir), study_name=config.search.study,
                             sampler=sampler(optuna, config.search), direction="maximize",
                             load_if_exists=True)


def _mine(study: Any, workdir: str) -> list:
  owner = os.path.abspath(workdir)
  return sorted((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(OWNER) == owner),
                key=lambda t: t.number)


def draw(study: Any, config: mc.ConfigDict, workdir: str, upto: int = 0) -> list:
  """This workdir's first `upto` trials (default `search.points`), drawing the missing ones:
  distinct points."""
  upto = upto or config.search.points
  optuna = require_optuna()
  dims = space_lib.dims(config)
  mine = _mine(study, workdir)
  seen = {tuple(sorted(t.user_attrs[POINT].items())) for t in mine}
  tries = 0
  while len(mine) < upto:
    trial = study.ask()
    point = space_lib.suggest(trial, dims)
    key = tuple(sorted(point.items()))
    if key in seen:   # an int/choice space drew a point again: it would train twice
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      tries += 1
      if tries > 100 * upto:
        raise config_lib.ConfigError(f"search.points={config.search.points}: the space holds "
                                     f"fewer distinct points ({len(seen)} drawn); lower it")
      continue
    seen.add(key)
    trial.set_user_attr(OWNER, os.path.abspath(workdir))
    trial.set_user_attr(POINT, point)
    mine = _mine(study, workdir)
  return mine[:upto]


def shared(points: list[dict], n: int, keys: list[str]) -> list[dict]:
  """Process 0's `n` points on every process (bit for bit: float64 sent as int32 pairs)."""
  from jkd.engine import parallel   # noqa: PLC0415
  if parallel.process_count() == 1:
    return points
  from jax.experimental import multihost_utils   # noqa: PLC0415
  table_ = np.zeros((n, len(keys)), np.float64)
  if parallel.is_writer():
    table_[:] = [[p[k] for k in keys] for p in points]
  got = np.asarray(multihost_utils.broadcast_one_to_all(table_.view(np.int32)))
  return [dict(zip(keys, map(float, row))) for row in got.view(np.float64)]
