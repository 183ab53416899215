"""jkd.losses against independent numpy formulas, hand-computed values and PyTorch semantics."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import losses

RTOL, ATOL = 2e-5, 1e-6


def _rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z.astype(np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


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


def _np_kd(zs, zt, T, reduction="batchmean"):
  lps, lpt = _log_softmax(zs / T), _log_softmax(zt / T)
  kl = np.sum(np.exp(lpt) * (lpt - lps), -1)
  if reduction == "mean":
    kl = kl / zs.shape[-1]
  return T * T * np.mean(kl)


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


def test_multi_teacher_and_dual_teacher_loss_compose_terms():
  rng = _rng(8)
  zs, zsig, zimg = (rng.normal(size=(6, 5)).astype(np.float32) * 2 for _ in range(3))
  y = rng.integers(0, 5, 6)
  lam, alpha, T = 0.9, 0.7, 4.0
  ce = -np.mean(_log_softmax(zs)[np.arange(6), y])
  kd_sig, kd_img = _np_kd(zs, zsig, T, "mean"), _np_kd(zs, zimg, T, "mean")
  ref = (1 - lam) * ce + lam * ((1 - alpha) * kd_sig + alpha * kd_img)
  total, terms = losses.dual_teacher_loss(jnp.asarray(zs), jnp.asarray(y), jnp.asarray(zsig),
                                          jnp.asarray(zimg), lam=lam, alpha=alpha, temperature=T,
                                          reduction="mean")
  _close(total, ref)
  _close(terms["ce"], ce)
  _close(terms["kd_sig"], kd_sig)
  _close(terms["kd_img"], kd_img)
  _close(terms["kd"], (1 - alpha) * kd_sig + alpha * kd_img)
  kd, per = losses.multi_teacher_kd(jnp.asarray(zs), [jnp.asarray(zsig), jnp.asarray(zimg)],
                                    [0.2, 0.5], temperature=T)
  _close(per, [_np_kd(zs, zsig, T), _np_kd(zs, zimg, T)])
  _close(kd, 0.2 * _np_kd(zs, zsig, T) + 0.5 * _np_kd(zs, zimg, T))
  with pytest.raises(ValueError, match="one weight per teacher"):
    losses.multi_teacher_kd(jnp.asarray(zs), [jnp.asarray(zsig)], [0.5, 0.5])


def test_dual_teacher_loss_vmaps_over_per_run_hyperparameters():
  rng = _rng(9)
  runs = 3
  zs, zsig, zimg = (jnp.asarray(rng.normal(size=(runs, 4, 5)).astype(np.float32)) for _ in range(3))
  y = jnp.asarray(rng.integers(0, 5, (runs, 4)))
  mask = jnp.asarray(np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1]], np.float32))
  lam, alpha, T = jnp.array([0.9, 0.99, 0.5]), jnp.array([0.1, 0.5, 0.9]), jnp.array([1.0, 4.0, 2.0])

  def f(zs, y, zsig, zimg, lam, alpha, T, mask):
    return losses.dual_teacher_loss(zs, y, zsig, zimg, lam=lam, alpha=alpha, temperature=T,
                                    mask=mask)[0]

  got = jax.jit(jax.vmap(f))(zs, y, zsig, zimg, lam, alpha, T, mask)
  for r in range(runs):
    _close(got[r], f(zs[r], y[r], zsig[r], zimg[r], float(lam[r]), float(alpha[r]), float(T[r]),
                     mask[r]), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Annealing-KD


def test_annealing_phi_schedule_hand_values():
  # tau_max 10 over 20 phase-1 epochs: two epochs per temperature, T = 10, 10, 9, 9, ..., 1, 1.
  temps = [int(losses.annealing_temperature(e, tau_max=10, phase1_epochs=20)) for e in range(22)]
  assert temps == [10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1]
  phis = [float(losses.annealing_phi(e, tau_max=10, phase1_epochs=20)) for e in (0, 1, 2, 10, 19, 25)]
  _close(phis, [0.1, 0.1, 0.2, 0.6, 1.0, 1.0], rtol=1e-6)
  # Uneven split: tau_max 4 over 6 epochs: T = 4 - floor(4e/6) = 4, 4, 3, 2, 2, 1.
  temps = [int(losses.annealing_temperature(e, tau_max=4, phase1_epochs=6)) for e in range(6)]
  assert temps == [4, 4, 3, 2, 2, 1]
  # Traced epoch under jit.
  phi = jax.jit(lambda e: losses.annealing_phi(e, tau_max=10, phase1_epochs=20))(jnp.int32(5))
  _close(phi, 0.3, rtol=1e-6)
  with pytest.raises(ValueError, match="phase1_epochs"):
    losses.annealing_phi(0, tau_max=10, phase1_epochs=5)


def test_annealing_kd_loss_matches_numpy_and_masks():
  rng = _rng(10)
  zs, zt = (rng.normal(size=(5, 4)).astype(np.float32) for _ in range(2))
  mask = np.array([1, 0, 1, 1, 0], np.float32)
  _close(losses.annealing_kd_loss(jnp.asarray(zs), jnp.asarray(zt), 0.3),
         np.mean((zs - 0.3 * zt) ** 2))
  _close(losses.annealing_kd_loss(jnp.asarray(zs), jnp.asarray(zt), 0.3, mask=jnp.asarray(mask)),
         np.mean((zs[mask > 0] - 0.3 * zt[mask > 0]) ** 2))
  g_t = jax.grad(lambda t: losses.annealing_kd_loss(jnp.asarray(zs), t, 0.5))(jnp.asarray(zt))
  assert np.all(np.asarray(g_t) == 0)


# ------------------------------------------------------------------------------------------------
# Similarity-preserving


def _np_gram(f, normalize=True):
  q = f.reshape(f.shape[0], -1).astype(np.float64)
  g = q @ q.T
  if normalize:
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
  return g


def _np_sp(student, teachers, weights):
  total = 0.0
  for layer, fs in enumerate(student):
    gt = sum(w * _np_gram(t[layer], normalize=False) for w, t in zip(weights, teachers))
    gt = gt / np.linalg.norm(gt, axis=1, keepdims=True)
    b = fs.shape[0]
    total += np.sum((_np_gram(fs) - gt) ** 2) / b ** 2
  return total


def _sp_feats(rng, b=6):
  # 1-D student stages (b, L, C) + logits; 1-D signal teacher and 2-D image teacher, other widths.
  student = [rng.normal(size=(b, 20, 4)), rng.normal(size=(b, 10, 8)), rng.normal(size=(b, 5))]
  sig = [rng.normal(size=(b, 20, 12)), rng.normal(size=(b, 10, 24)), rng.normal(size=(b, 5))]
  img = [rng.normal(size=(b, 8, 8, 3)), rng.normal(size=(b, 4, 4, 6)), rng.normal(size=(b, 5))]
  as32 = lambda fs: [np.abs(f).astype(np.float32) + 0.1 * i for i, f in enumerate(fs)]
  return as32(student), as32(sig), as32(img)


def _j(fs):
  return [jnp.asarray(f) for f in fs]


def test_gram_matches_numpy():
  f = _rng(11).normal(size=(5, 3, 4)).astype(np.float32)
  _close(losses.gram(jnp.asarray(f), normalize=False), _np_gram(f, normalize=False), rtol=1e-5)
  _close(losses.gram(jnp.asarray(f)), _np_gram(f), rtol=1e-5)


def test_sp_loss_matches_numpy_single_and_merged_teachers():
  student, sig, img = _sp_feats(_rng(12))
  _close(losses.sp_loss(_j(student), _j(sig)), _np_sp(student, [sig], [1.0]), rtol=1e-4)
  got = losses.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[0.3, 0.7], beta=200.0)
  _close(got, 200.0 * _np_sp(student, [sig, img], [0.3, 0.7]), rtol=1e-4)
  # Merging happens before normalisation: differs from averaging the normalised Gram matrices.
  g_avg = 0.3 * _np_gram(sig[0]) + 0.7 * _np_gram(img[0])
  g_avg = g_avg / np.linalg.norm(g_avg, axis=1, keepdims=True)
  merged = _np_sp(student[:1], [sig[:1], img[:1]], [0.3, 0.7])
  assert abs(merged - np.sum((_np_gram(student[0]) - g_avg) ** 2) / 36) > 1e-6
  # Weights (1, 0) reduce to the single teacher; 'mean' over layers divides by their number.
  _close(losses.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[1.0, 0.0]),
         losses.sp_loss(_j(student), _j(sig)), rtol=1e-5)
  _close(losses.sp_loss(_j(student), _j(sig), layer_reduction="mean"),
         _np_sp(student, [sig], [1.0]) / 3, rtol=1e-4)


def test_sp_loss_invariant_to_feature_scaling():
  student, sig, img = _sp_feats(_rng(13))
  base = losses.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[0.5, 0.5])
  scaled_s = [f * c for f, c in zip(student, (10.0, 0.01, 3.0))]
  # Scaling both teachers' maps of a layer by the same constant keeps the merged G_t's direction.
  scaled_t = [[f * c for f, c in zip(t, (7.0, 0.2, 5.0))] for t in (sig, img)]
  _close(losses.sp_loss(_j(scaled_s), [_j(scaled_t[0]), _j(scaled_t[1])], teacher_weights=[0.5, 0.5]),
         base, rtol=1e-4)


def test_sp_loss_mask_equals_subset():
  student, sig, img = _sp_feats(_rng(14), b=7)
  mask = np.array([1, 0, 1, 1, 0, 1, 1], np.float32)
  keep = mask > 0
  sub = lambda fs: _j([f[keep] for f in fs])
  got = losses.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[0.4, 0.6],
                       mask=jnp.asarray(mask))
  _close(got, losses.sp_loss(sub(student), [sub(sig), sub(img)], teacher_weights=[0.4, 0.6]),
         rtol=1e-5)
  _close(got, _np_sp([f[keep] for f in student], [[f[keep] for f in sig], [f[keep] for f in img]],
                     [0.4, 0.6]), rtol=1e-4)


def test_sp_loss_no_teacher_gradient_and_layer_count_error():
  student, sig, _ = _sp_feats(_rng(15))
  g = jax.grad(lambda t: losses.sp_loss(_j(student), t))(_j(sig))
  assert all(np.all(np.asarray(x) == 0) for x in g)
  with pytest.raises(ValueError, match="same chosen layers"):
    losses.sp_loss(_j(student), _j(sig[:2]))


# ------------------------------------------------------------------------------------------------
# Attention transfer


def _np_at(f):
  a = np.mean(f.astype(np.float64) ** 2, -1).reshape(f.shape[0], -1)
  return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_at_loss_matches_numpy_same_size_and_masks():
  rng = _rng(16)
  fs = [rng.normal(size=(5, 12, 4)).astype(np.float32), rng.normal(size=(5, 6, 8)).astype(np.float32)]
  ft = [rng.normal(size=(5, 12, 16)).astype(np.float32), rng.normal(size=(5, 6, 2)).astype(np.float32)]
  ref = sum(np.mean((_np_at(s) - _np_at(t)) ** 2) for s, t in zip(fs, ft))
  _close(losses.at_loss(_j(fs), _j(ft)), ref, rtol=1e-5)
  mask = np.array([1, 1, 0, 1, 0], np.float32)
  keep = mask > 0
  ref_m = sum(np.mean((_np_at(s[keep]) - _np_at(t[keep])) ** 2) for s, t in zip(fs, ft))
  _close(losses.at_loss(_j(fs), _j(ft), mask=jnp.asarray(mask)), ref_m, rtol=1e-5)
  g = jax.grad(lambda t: losses.at_loss(_j(fs), t))(_j(ft))
  assert all(np.all(np.asarray(x) == 0) for x in g)


def test_at_loss_resamples_teacher_map_to_student_size():
  rng = _rng(17)
  # 2-D, teacher 8x8 -> student 4x4: 2x2 average pool of mean_c(F²).
  fs, ft = rng.normal(size=(3, 4, 4, 5)), rng.normal(size=(3, 8, 8, 7))
  e = np.mean(ft ** 2, -1).reshape(3, 4, 2, 4, 2).mean((2, 4)).reshape(3, -1)
  ref = np.mean((_np_at(fs) - e / np.linalg.norm(e, axis=1, keepdims=True)) ** 2)
  _close(losses.at_loss(jnp.asarray(fs, jnp.float32), jnp.asarray(ft, jnp.float32)), ref, rtol=1e-4)
  # 1-D, teacher 7 -> student 10: linear interpolation at half-pixel centres, edges clamped.
  fs, ft = rng.normal(size=(2, 10, 3)), rng.normal(size=(2, 7, 4))
  x = (np.arange(10) + 0.5) * 7 / 10 - 0.5
  e = np.stack([np.interp(x, np.arange(7), row) for row in np.mean(ft ** 2, -1)])
  ref = np.mean((_np_at(fs) - e / np.linalg.norm(e, axis=1, keepdims=True)) ** 2)
  _close(losses.at_loss(jnp.asarray(fs, jnp.float32), jnp.asarray(ft, jnp.float32)), ref, rtol=1e-4)


def test_at_loss_rejects_2d_teacher_for_1d_student():
  with pytest.raises(ValueError, match="same spatial rank"):
    losses.at_loss(jnp.ones((2, 16, 4)), jnp.ones((2, 8, 8, 4)))


def test_mask_shape_error_names_the_fix():
  with pytest.raises(ValueError, match=r"mask must have shape \(batch,\)"):
    losses.cross_entropy(jnp.zeros((3, 2)), jnp.array([0, 1, 0]), mask=jnp.ones((3, 1)))
