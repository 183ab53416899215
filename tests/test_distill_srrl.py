"""SRRL (`jkd.distill.srrl`): its pooled-feature term against numpy, and the term (statm plus the
teacher's classifier on the connected map) against numpy."""

import numpy as np
import pytest

from jkd.distill import srrl

from distill_setup import (FB as B, as_np, bn_train, conv, feature_world, head_features,
                           head_logits, relu)
from numpy_ref import f32 as _f32


def _close(a, b, rtol=2e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                             atol=atol)


def test_srrl_statm_matches_numpy():
  rng = np.random.default_rng(6)
  fs = rng.normal(size=(3, 4, 5, 2))
  ft_small = rng.normal(size=(3, 2, 3, 2))                    # spatial sizes may differ
  ref = np.mean((fs.mean((1, 2)) - ft_small.mean((1, 2))) ** 2)
  _close(srrl.srrl_statm_loss(*_f32(fs, ft_small)), ref)
  sig_s, sig_t = rng.normal(size=(3, 10, 2)), rng.normal(size=(3, 4, 2))      # 1-D maps
  _close(srrl.srrl_statm_loss(*_f32(sig_s, sig_t)), np.mean((sig_s.mean(1) - sig_t.mean(1)) ** 2))


@pytest.fixture(scope="module")
def world():
  return feature_world(("srrl",))


def test_term_matches_numpy(world):
  """Σ_k w_k (statm + MSE(teacher fc on the connected map, teacher logits))."""
  w = world
  total, terms, _ = w["run"](w["term_vars"], w["pool"][:B])
  p = as_np(w["term_vars"]["params"])
  _, (f1, f2, emb) = as_np(w["student"])
  teach, tv = as_np(w["teach"]), as_np(w["tv"])
  wt = (1.0, 2.0)                                        # teachers.a.weight, teachers.b.weight
  want = 0.0
  for k in range(2):
    q = p["srrl"][str(k)]
    conn = relu(bn_train(conv(f2, q["conv"]), q["bn"]))
    f_t = head_features(tv[k], teach[k].stages[0])
    statm = np.mean((conn.mean(1) - f_t.mean(1)) ** 2)
    l_sr = np.mean((head_logits(tv[k], conn) - teach[k].logits) ** 2)
    want += wt[k] * (statm + l_sr)
  np.testing.assert_allclose(float(terms["srrl"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(total), want, rtol=1e-4)
  _, terms0, _ = w["run"](w["term_vars"], w["pool"][:B], epoch=0)
  assert float(terms0["srrl"]) == float(terms["srrl"])         # no epoch gate (CA-MKD has one)
