"""PKT (`jkd.distill.pkt`): the pure loss against numpy."""

from __future__ import annotations

import numpy as np

from jkd.distill import pkt
from numpy_ref import rng as _rng, close as _close, f32 as _f32


def np_pkt(es, et, eps=1e-7):
  def prob(x):
    x = x / (np.sqrt((x ** 2).sum(1, keepdims=True)) + eps)
    k = (x @ x.T + 1) / 2
    return k / k.sum(1, keepdims=True)
  ps, pt = prob(es), prob(et)
  return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def test_pkt_matches_numpy_and_is_zero_for_identical_embeddings():
  rng = _rng(5)
  es, et = rng.normal(size=(6, 4)), rng.normal(size=(6, 9))
  _close(pkt.pkt_loss(*_f32(es, et)), np_pkt(es, et), rtol=1e-4)
  e = _f32(es)[0]
  _close(pkt.pkt_loss(e, e), 0.0, atol=1e-7)
  _close(pkt.pkt_loss(e, 5.0 * e), 0.0, atol=1e-6)       # cosine kernels: scale-free
