"""FitNet (`jkd.distill.fitnet`): the hint loss (also SimKD's and SRRL's MSE) against numpy."""

from __future__ import annotations

import numpy as np

from jkd.distill import fitnet
from numpy_ref import rng as _rng, close as _close, f32 as _f32


def test_fitnet_loss_matches_numpy():
  rng = _rng(6)
  fs, ft = rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(3, 4, 5, 2))
  _close(fitnet.fitnet_loss(*_f32(fs, ft)), np.mean((fs - ft) ** 2))
