"""jkd.losses, the primitives the terms share, against independent numpy formulas, hand-computed
values and PyTorch semantics (each method's own checks: tests/test_distill_<name>.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import losses
from numpy_ref import rng as _rng, close as _close, np_kd as _np_kd, np_gram as _np_gram


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z.astype(np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


# ------------------------------------------------------------------------------------------------
# Cross-entropy, focal, standardisation


def test_cross_entropy_matches_numpy_for_int_and_soft_labels():
  rng = _rng()
  z = rng.normal(size=(6, 5)).astype(np.float32) * 3
  y = rng.integers(0, 5, 6)
  ref = -np.mean(_log_softmax(z)[np.arange(6), y])
  _close(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y)), ref)
  soft = rng.dirichlet(np.ones(5), 6).astype(np.float32)
  ref_soft = -np.mean(np.sum(soft * _log_softmax(z), -1))
  _close(losses.cross_entropy(jnp.asarray(z), jnp.asarray(soft)), ref_soft)


def test_cross_entropy_label_smoothing_matches_torch_hand_value():
  # torch CrossEntropyLoss(label_smoothing=0.1)([[1, 0]], [0]) = 0.9 * nll + 0.1 * mean_k(-log p_k)
  nll0, nll1 = math.log(1 + math.exp(-1)), math.log(1 + math.e)
  expected = 0.9 * nll0 + 0.1 * (nll0 + nll1) / 2  # = 0.363262
  got = losses.cross_entropy(jnp.array([[1.0, 0.0]]), jnp.array([0]), label_smoothing=0.1)
  _close(got, expected)
  _close(expected, 0.363262, rtol=0, atol=1e-6)


def test_cross_entropy_mask_equals_subset_and_weights():
  rng = _rng(1)
  z, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 4, 8)
  mask = np.array([1, 0, 1, 1, 0, 0, 1, 1], np.float32)
  keep = mask > 0
  _close(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y), mask=jnp.asarray(mask)),
         losses.cross_entropy(jnp.asarray(z[keep]), jnp.asarray(y[keep])))
  w = rng.uniform(0, 2, 8).astype(np.float32)
  per = -_log_softmax(z)[np.arange(8), y]
  _close(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y), mask=jnp.asarray(w)),
         np.sum(w * per) / np.sum(w))
  assert float(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y), mask=jnp.zeros(8))) == 0.0


def test_standardize_logits_hand_values_unbiased_std_no_mean_shift():
  z = jnp.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
  # torch.std([1, 2, 3]) = 1 (unbiased); [2, 4, 6] has std 2.
  _close(losses.standardize_logits(z), [[1, 2, 3], [1, 2, 3]], rtol=1e-6)
  _close(losses.standardize_logits(z, scale=2.0), [[2, 4, 6], [2, 4, 6]], rtol=1e-6)
  biased = math.sqrt(2 / 3)
  _close(losses.standardize_logits(z[:1], ddof=0), [[1 / biased, 2 / biased, 3 / biased]], rtol=1e-6)


def test_cross_entropy_standardize_matches_lab_formula():
  rng = _rng(2)
  z, y = rng.normal(size=(5, 6)).astype(np.float32) * 4, rng.integers(0, 6, 5)
  zs = z / z.std(-1, ddof=1, keepdims=True)
  ref = -np.mean(_log_softmax(zs)[np.arange(5), y])
  _close(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y), standardize=True), ref, rtol=1e-5)


def test_focal_loss_matches_numpy_and_reduces_to_ce():
  rng = _rng(3)
  z, y = rng.normal(size=(7, 4)).astype(np.float32) * 2, rng.integers(0, 4, 7)
  alpha = np.array([0.25, 1.0, 0.5, 2.0], np.float32)
  logp = _log_softmax(z)[np.arange(7), y]
  ref = np.mean(-alpha[y] * (1 - np.exp(logp)) ** 2.0 * logp)
  _close(losses.focal_loss(jnp.asarray(z), jnp.asarray(y), gamma=2.0, alpha=alpha), ref)
  _close(losses.focal_loss(jnp.asarray(z), jnp.asarray(y), gamma=0.0),
         losses.cross_entropy(jnp.asarray(z), jnp.asarray(y)))
  mask = np.array([1, 1, 0, 1, 0, 1, 1], np.float32)
  _close(losses.focal_loss(jnp.asarray(z), jnp.asarray(y), alpha=alpha, mask=jnp.asarray(mask)),
         np.sum(mask * -alpha[y] * (1 - np.exp(logp)) ** 2 * logp) / mask.sum())
  with pytest.raises(ValueError, match="one weight per class"):
    losses.focal_loss(jnp.asarray(z), jnp.asarray(y), alpha=[1.0, 2.0])


# ------------------------------------------------------------------------------------------------
# KD


def test_kd_loss_matches_numpy_and_mean_is_batchmean_over_k():
  rng = _rng(4)
  zs, zt = (rng.normal(size=(6, 12)).astype(np.float32) * 3 for _ in range(2))
  for T in (1.0, 4.0):
    bm = losses.kd_loss(jnp.asarray(zs), jnp.asarray(zt), temperature=T)
    _close(bm, _np_kd(zs, zt, T))
    mean = losses.kd_loss(jnp.asarray(zs), jnp.asarray(zt), temperature=T, reduction="mean")
    _close(mean, float(bm) / 12)
  with pytest.raises(ValueError, match="reduction"):
    losses.kd_loss(jnp.asarray(zs), jnp.asarray(zt), reduction="sum")
  with pytest.raises(ValueError, match="same shape"):
    losses.kd_loss(jnp.asarray(zs), jnp.asarray(zt[:, :5]))


def test_kd_loss_torch_kldivloss_hand_values():
  # p_s uniform over 2 classes, p_t = [3/4, 1/4] at T = 1: KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812.
  zs, zt = jnp.array([[0.0, 0.0]]), jnp.array([[math.log(3.0), 0.0]])
  kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
  _close(kl, 0.130812, rtol=0, atol=1e-6)
  _close(losses.kd_loss(zs, zt, temperature=1.0), kl)
  # nn.KLDivLoss() (reduction='mean') averages the 2 elements: 0.065406.
  _close(losses.kd_loss(zs, zt, temperature=1.0, reduction="mean"), kl / 2)
  # T = 2: p_t = [√3, 1] / (√3 + 1); loss = 4 · Σ p ln(2p) = 0.145363.
  p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
  _close(losses.kd_loss(zs, zt, temperature=2.0), 4 * np.sum(p * np.log(2 * p)))
  _close(4 * np.sum(p * np.log(2 * p)), 0.145363, rtol=0, atol=1e-6)


def test_kd_loss_zero_for_identical_logits_and_no_teacher_gradient():
  rng = _rng(5)
  zs, zt = (jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32)) for _ in range(2))
  _close(losses.kd_loss(zs, zs, temperature=3.0), 0.0, atol=1e-7)
  g_s, g_t = jax.grad(lambda a, b: losses.kd_loss(a, b, temperature=4.0), argnums=(0, 1))(zs, zt)
  assert np.all(np.asarray(g_t) == 0)
  assert np.abs(np.asarray(g_s)).max() > 0
  # Gradient w.r.t. the student logits: T² · (p_s − p_t) / (T · B) for 'batchmean'.
  ps = np.exp(_log_softmax(np.asarray(zs) / 4)); pt = np.exp(_log_softmax(np.asarray(zt) / 4))
  _close(g_s, 4.0 * (ps - pt) / 4, rtol=1e-4, atol=1e-6)


def test_kd_loss_mask_equals_subset():
  rng = _rng(6)
  zs, zt = (rng.normal(size=(6, 3)).astype(np.float32) for _ in range(2))
  mask = np.array([0, 1, 1, 0, 1, 0], np.float32)
  keep = mask > 0
  _close(losses.kd_loss(jnp.asarray(zs), jnp.asarray(zt), reduction="mean", mask=jnp.asarray(mask)),
         _np_kd(zs[keep], zt[keep], 4.0, "mean"))


def test_kd_loss_standardize_matches_lab_tda_kd_term():
  rng = _rng(7)
  zs, zt = (rng.normal(size=(5, 12)).astype(np.float32) * 5 for _ in range(2))
  # T*T*KLDivLoss()(log_softmax(2 z_s/σ_s), softmax(2 z_t/σ_t)), σ = torch.std (unbiased).
  ss, st = zs.std(-1, ddof=1, keepdims=True), zt.std(-1, ddof=1, keepdims=True)
  lps, lpt = _log_softmax(2 * zs / ss), _log_softmax(2 * zt / st)
  ref = 16 * np.mean(np.exp(lpt) * (lpt - lps))
  got = losses.kd_loss(jnp.asarray(zs), jnp.asarray(zt), temperature=4.0, reduction="mean",
                       standardize=True)
  _close(got, ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Batch similarity (SP's Gram matrices)


def test_gram_matches_numpy():
  f = _rng(11).normal(size=(5, 3, 4)).astype(np.float32)
  _close(losses.gram(jnp.asarray(f), normalize=False), _np_gram(f, normalize=False), rtol=1e-5)
  _close(losses.gram(jnp.asarray(f)), _np_gram(f), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Masks


def test_mask_shape_error_names_the_fix():
  with pytest.raises(ValueError, match=r"mask must have shape \(batch,\)"):
    losses.cross_entropy(jnp.zeros((3, 2)), jnp.array([0, 1, 0]), mask=jnp.ones((3, 1)))
