"""AT (`jkd.distill.at`): the pure loss against numpy (same and resampled sizes, masks), no
teacher gradient, a 2-D teacher for a 1-D student refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd.distill import at
from numpy_ref import rng as _rng, close as _close


def _j(fs):
  return [jnp.asarray(f) for f in fs]


def _np_at(f):
  a = np.mean(f.astype(np.float64) ** 2, -1).reshape(f.shape[0], -1)
  return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_at_loss_matches_numpy_same_size_and_masks():
  rng = _rng(16)
  fs = [rng.normal(size=(5, 12, 4)).astype(np.float32), rng.normal(size=(5, 6, 8)).astype(np.float32)]
  ft = [rng.normal(size=(5, 12, 16)).astype(np.float32), rng.normal(size=(5, 6, 2)).astype(np.float32)]
  ref = sum(np.mean((_np_at(s) - _np_at(t)) ** 2) for s, t in zip(fs, ft))
  _close(at.at_loss(_j(fs), _j(ft)), ref, rtol=1e-5)
  mask = np.array([1, 1, 0, 1, 0], np.float32)
  keep = mask > 0
  ref_m = sum(np.mean((_np_at(s[keep]) - _np_at(t[keep])) ** 2) for s, t in zip(fs, ft))
  _close(at.at_loss(_j(fs), _j(ft), mask=jnp.asarray(mask)), ref_m, rtol=1e-5)
  g = jax.grad(lambda t: at.at_loss(_j(fs), t))(_j(ft))
  assert all(np.all(np.asarray(x) == 0) for x in g)


def test_at_loss_resamples_teacher_map_to_student_size():
  rng = _rng(17)
  # 2-D, teacher 8x8 -> student 4x4: 2x2 average pool of mean_c(F²).
  fs, ft = rng.normal(size=(3, 4, 4, 5)), rng.normal(size=(3, 8, 8, 7))
  e = np.mean(ft ** 2, -1).reshape(3, 4, 2, 4, 2).mean((2, 4)).reshape(3, -1)
  ref = np.mean((_np_at(fs) - e / np.linalg.norm(e, axis=1, keepdims=True)) ** 2)
  _close(at.at_loss(jnp.asarray(fs, jnp.float32), jnp.asarray(ft, jnp.float32)), ref, rtol=1e-4)
  # 1-D, teacher 7 -> student 10: linear interpolation at half-pixel centres, edges clamped.
  fs, ft = rng.normal(size=(2, 10, 3)), rng.normal(size=(2, 7, 4))
  x = (np.arange(10) + 0.5) * 7 / 10 - 0.5
  e = np.stack([np.interp(x, np.arange(7), row) for row in np.mean(ft ** 2, -1)])
  ref = np.mean((_np_at(fs) - e / np.linalg.norm(e, axis=1, keepdims=True)) ** 2)
  _close(at.at_loss(jnp.asarray(fs, jnp.float32), jnp.asarray(ft, jnp.float32)), ref, rtol=1e-4)


def test_at_loss_rejects_2d_teacher_for_1d_student():
  with pytest.raises(ValueError, match="same spatial rank"):
    at.at_loss(jnp.ones((2, 16, 4)), jnp.ones((2, 8, 8, 4)))
