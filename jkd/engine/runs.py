"""The runs axis: every (sweep point, seed, fold) of an experiment, in a fixed order.

Run i of R is the i-th element of `product(sweep points, seeds, folds)` (folds vary fastest). When R
does not divide the device count, `pad` appends inert copies of run 0 that are dropped from results.
"""

from __future__ import annotations

import dataclasses
import itertools

import ml_collections as mc
import numpy as np

from jkd import config as config_lib


@dataclasses.dataclass(frozen=True)
class Run:
  index: int
  fold: int
  seed: int
  sweep: dict[str, float]
  pad: bool = False        # an inert copy added to fill the devices; never reported

  def describe(self) -> str:
    sw = " ".join(f"{k}={v:g}" for k, v in self.sweep.items())
    return f"fold {self.fold} seed {self.seed}" + (f" {sw}" if sw else "")


def expand(config: mc.ConfigDict, num_folds: int) -> list[Run]:
  points = config_lib.sweep_points(config)
  seeds = config_lib.seeds(config)
  return [Run(i, fold, seed, point) for i, (point, seed, fold)
          in enumerate(itertools.product(points, seeds, range(num_folds)))]


def pad(runs: list[Run], multiple: int) -> list[Run]:
  extra = -len(runs) % multiple
  return runs + [dataclasses.replace(runs[0], index=len(runs) + i, pad=True) for i in range(extra)]


def hparams(config: mc.ConfigDict, runs: list[Run]) -> dict[str, np.ndarray]:
  """Per-run float32 values (R,) of every numeric optim.*/loss.* key, sweep values substituted."""
  base = config_lib.numeric_hparams(config)
  return {k: np.array([r.sweep.get(k, v) for r in runs], np.float32) for k, v in base.items()}
