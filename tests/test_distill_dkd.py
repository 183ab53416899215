"""DKD (`jkd.distill.dkd`): the pure loss against mdistiller's formula (numpy), its relation to KD,
its finiteness where torch.log would give −inf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jkd import losses
from jkd.distill import dkd
from numpy_ref import rng as _rng, close as _close, f32 as _f32, np_log_softmax, np_softmax, np_kl_rows


def np_dkd(zs, zt, y, alpha, beta, T):
  """mdistiller dkd_loss: torch.log of the masked binary probabilities, 1000·onehot after /T."""
  B, C = zs.shape
  ps, pt = np_softmax(zs / T), np_softmax(zt / T)
  tckd = nckd = 0.0
  for i in range(B):
    others = [c for c in range(C) if c != y[i]]
    bs = np.array([ps[i, y[i]], ps[i, others].sum()])
    bt = np.array([pt[i, y[i]], pt[i, others].sum()])
    tckd += np.sum(bt * (np.log(bt) - np.log(bs)))
    off = np.zeros(C)
    off[y[i]] = 1000.0
    lqs, lqt = np_log_softmax(zs[i] / T - off), np_log_softmax(zt[i] / T - off)
    nckd += np_kl_rows(np.exp(lqt), lqt, lqs)
  tckd, nckd = tckd * T * T / B, nckd * T * T / B
  return alpha * tckd + beta * nckd, tckd, nckd


def _parts(zs, zt, y, temperature):
  """(TCKD, NCKD): dkd_loss with (α, β) = (1, 0) and (0, 1) (the removed `dkd_parts`)."""
  return (dkd.dkd_loss(zs, zt, y, alpha=1.0, beta=0.0, temperature=temperature),
          dkd.dkd_loss(zs, zt, y, alpha=0.0, beta=1.0, temperature=temperature))


def test_dkd_matches_mdistiller_formula_and_its_parts():
  rng = _rng(0)
  zs, zt = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
  y = rng.integers(0, 5, 6)
  ref, ref_t, ref_n = np_dkd(zs, zt, y, 1.3, 6.0, 4.0)
  zs32, zt32 = _f32(zs, zt)
  _close(dkd.dkd_loss(zs32, zt32, jnp.asarray(y), alpha=1.3, beta=6.0, temperature=4.0), ref)
  tckd, nckd = _parts(zs32, zt32, jnp.asarray(y), temperature=4.0)
  _close(tckd, ref_t)
  _close(nckd, ref_n)


def test_dkd_kd_equals_tckd_plus_one_minus_teacher_gt_prob_times_nckd_per_example():
  rng = _rng(1)
  T = 2.0
  for i in range(4):
    zs, zt = _f32(rng.normal(size=(1, 7)) * 2, rng.normal(size=(1, 7)) * 2)
    y = jnp.asarray(rng.integers(0, 7, 1))
    tckd, nckd = _parts(zs, zt, y, temperature=T)
    p_gt = jax.nn.softmax(zt / T)[0, y[0]]
    kd = losses.kd_loss(zs, zt, temperature=T)
    _close(tckd + (1 - p_gt) * nckd, kd, rtol=1e-5, atol=1e-5)
    # the same through dkd_loss with alpha = 1, beta = 1 - p_gt
    _close(dkd.dkd_loss(zs, zt, y, alpha=1.0, beta=1 - p_gt, temperature=T), kd,
           rtol=1e-5, atol=1e-5)


def test_dkd_stays_finite_with_underflowing_binary_probabilities():
  # the student puts all its mass on a wrong class (p_gt = 0 in float32): torch.log would give -inf
  zs = jnp.array([[-200.0, 200.0, 0.0], [300.0, -300.0, 0.0]])
  zt = jnp.array([[3.0, 1.0, 0.0], [0.0, 400.0, -50.0]])
  y = jnp.array([0, 0])
  f = lambda s: dkd.dkd_loss(s, zt, y, alpha=1.0, beta=8.0, temperature=1.0)
  value, grad = jax.value_and_grad(f)(zs)
  assert np.isfinite(float(value)) and float(value) > 100
  assert np.all(np.isfinite(np.asarray(grad)))
