"""RKD (`jkd.distill.rkd`): the pure loss against numpy loops, its invariances."""

from __future__ import annotations

import math

import numpy as np

from jkd.distill import rkd
from numpy_ref import rng as _rng, close as _close, f32 as _f32


def np_huber(x):
  return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def np_rkd(es, et, wd, wa):
  B = es.shape[0]

  def dist(e):
    d = np.zeros((B, B))
    for i in range(B):
      for j in range(B):
        if i != j:
          d[i, j] = math.sqrt(max(e[i] @ e[i] + e[j] @ e[j] - 2 * e[i] @ e[j], 1e-12))
    return d / d[d > 0].mean()

  def angles(e):
    a = np.zeros((B, B, B))
    for i in range(B):
      for j in range(B):
        for k in range(B):
          vj, vk = e[j] - e[i], e[k] - e[i]
          vj = vj / max(np.linalg.norm(vj), 1e-12)
          vk = vk / max(np.linalg.norm(vk), 1e-12)
          a[i, j, k] = vj @ vk
    return a

  loss_d = np.mean(np_huber(dist(es) - dist(et)))
  loss_a = np.mean(np_huber(angles(es) - angles(et)))
  return wd * loss_d + wa * loss_a


def test_rkd_matches_numpy_loops():
  rng = _rng(3)
  es, et = rng.normal(size=(5, 4)), rng.normal(size=(5, 7)) * 3   # dimensions may differ
  got = rkd.rkd_loss(*_f32(es, et), distance_weight=25.0, angle_weight=50.0)
  _close(got, np_rkd(es, et, 25.0, 50.0), rtol=1e-4, atol=1e-5)


def test_rkd_is_invariant_to_scaling_and_translating_the_embeddings():
  rng = _rng(4)
  es, et = _f32(rng.normal(size=(6, 5)), rng.normal(size=(6, 5)))
  base = rkd.rkd_loss(es, et, distance_weight=25.0, angle_weight=50.0)
  assert float(base) > 0
  moved = rkd.rkd_loss(3.0 * es + 1.5, 0.2 * et - 4.0, distance_weight=25.0, angle_weight=50.0)
  _close(moved, base, rtol=1e-4)
  _close(rkd.rkd_loss(es, 2.0 * es + 1.0, distance_weight=1.0, angle_weight=1.0), 0.0, atol=1e-5)
