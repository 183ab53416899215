"""DIST (`jkd.distill.dist`): the pure loss against numpy."""

from __future__ import annotations

import numpy as np

from jkd.distill import dist
from numpy_ref import rng as _rng, close as _close, f32 as _f32, np_softmax


def np_pearson(a, b, eps=1e-8):
  a, b = a - a.mean(), b - b.mean()
  return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def np_dist(zs, zt, beta, gamma, tau):
  ys, yt = np_softmax(zs / tau), np_softmax(zt / tau)
  inter = 1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(ys.shape[0])])
  intra = 1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(ys.shape[1])])
  return tau ** 2 * (beta * inter + gamma * intra)


def test_dist_matches_numpy_and_is_zero_for_identical_logits():
  rng = _rng(2)
  zs, zt = rng.normal(size=(8, 6)) * 2, rng.normal(size=(8, 6)) * 2
  zs32, zt32 = _f32(zs, zt)
  got = dist.dist_loss(zs32, zt32, beta=0.7, gamma=1.5, temperature=4.0)
  _close(got, np_dist(zs, zt, 0.7, 1.5, 4.0), rtol=1e-4)
  same = dist.dist_loss(zs32, zs32, beta=1.0, gamma=1.0, temperature=1.0)
  _close(same, 0.0, atol=1e-5)
