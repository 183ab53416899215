"""Search beyond the grid: random and adaptive hyper-parameter search over per-run keys, trained as
one program per rung (successive halving), chosen on validation subjects, never on test.

A config with a `search` section (`space.default_config()`; `configs/demo_search.py`) trains its
points as the sweep axis (times folds and seeds); `jkd.main` dispatches it here. `space` holds the
space and its checks, `study` the Optuna study (its sampler, the points drawn), `halving` the
waves and rungs (W/rung<k>/, each a jkd workdir), `outputs` what a search writes (W/search.csv,
W/search.json, the chosen point's runs), `plots` its figures.
"""

from __future__ import annotations

import ml_collections as mc

from jkd.search.space import default_config, dims, is_search, lab_kd, rungs   # noqa: F401


def check(config: mc.ConfigDict) -> None:
  """A search's every user error, before training (`jkd.config.ConfigError`, one line): the
  section, the space's ranges and keys (per-run keys only), validation subjects, Optuna."""
  from jkd.search import space, study   # noqa: PLC0415
  space.check(config)
  study.require_optuna()


def num_points(config: mc.ConfigDict) -> int:
  """The points the first (largest) program trains: a search's first wave, else the sweep's."""
  if is_search(config):
    from jkd.search import space   # noqa: PLC0415
    return space.waves(config.search)[0]
  from jkd import config as config_lib   # noqa: PLC0415
  return len(config_lib.sweep_points(config))


def run(config: mc.ConfigDict, workdir: str, overwrite: bool = False, runs_per_fold: int = 0,
        log=print) -> dict:
  from jkd.search import halving   # noqa: PLC0415
  return halving.run(config, workdir, overwrite, runs_per_fold=runs_per_fold, log=log)
