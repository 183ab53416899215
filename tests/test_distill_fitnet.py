"""FitNet (`jkd.distill.fitnet`): the hint loss (also SimKD's and SRRL's MSE) against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jkd.distill import fitnet

RTOL, ATOL = 2e-5, 1e-6


def _rng(seed: int) -> np.random.Generator:
  return np.random.default_rng(seed)


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def _f32(*arrays):
  return [jnp.asarray(np.asarray(a, np.float32)) for a in arrays]


def test_fitnet_loss_matches_numpy():
  rng = _rng(6)
  fs, ft = rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(3, 4, 5, 2))
  _close(fitnet.fitnet_loss(*_f32(fs, ft)), np.mean((fs - ft) ** 2))
