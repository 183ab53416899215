"""The distillation-method losses of jkd.losses (DKD, DIST, RKD, PKT, FitNet, PEFD, SRRL, EBKD,
CA-MKD, CRD) against independent float64 numpy loops written from the authors' code, plus
identities, mask behaviour, jit/vmap over runs and finite gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import losses

RTOL, ATOL = 2e-5, 1e-6


def _rng(seed: int) -> np.random.Generator:
  return np.random.default_rng(seed)


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def _f32(*arrays):
  return [jnp.asarray(np.asarray(a, np.float32)) for a in arrays]


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_softmax(z):
  return np.exp(np_log_softmax(z))


def np_kl_rows(p_t, log_p_t, log_p_s):
  """Σ_c p_t (log p_t − log p_s) per row; entries with p_t == 0 contribute 0 (torch kl_div)."""
  return np.sum(np.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), -1)


# ------------------------------------------------------------------------------------------------
# numpy references (loops, float64)


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


def np_pearson(a, b, eps=1e-8):
  a, b = a - a.mean(), b - b.mean()
  return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def np_dist(zs, zt, beta, gamma, tau):
  ys, yt = np_softmax(zs / tau), np_softmax(zt / tau)
  inter = 1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(ys.shape[0])])
  intra = 1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(ys.shape[1])])
  return tau ** 2 * (beta * inter + gamma * intra)


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


def np_pkt(es, et, eps=1e-7):
  def prob(x):
    x = x / (np.sqrt((x ** 2).sum(1, keepdims=True)) + eps)
    k = (x @ x.T + 1) / 2
    return k / k.sum(1, keepdims=True)
  ps, pt = prob(es), prob(et)
  return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def np_ebkd_weights(zt):
  K, B, _ = zt.shape
  h = np.zeros((K, B))
  for k in range(K):
    p = np_softmax(zt[k])
    h[k] = -(p * np.log(p)).sum(1)
  return 1 - h / h.sum(0)


def np_camkd_weights(zt, y):
  K, B, _ = zt.shape
  ce = np.array([[-np_log_softmax(zt[k, b])[y[b]] for b in range(B)] for k in range(K)])
  return (1 - np.exp(ce) / np.exp(ce).sum(0)) / (K - 1)


def np_weighted_kd(zs, zt, w, T, reduction):
  K, B, C = zt.shape
  total = 0.0
  for k in range(K):
    lps, lpt = np_log_softmax(zs / T), np_log_softmax(zt[k] / T)
    kl = T * T * np_kl_rows(np.exp(lpt), lpt, lps)
    if reduction == "mean":
      kl = kl / C
    total += np.sum(w[k] * kl)
  return total / (B * K)


def np_crd_nce(x, n_data, eps=1e-7):
  B, m = x.shape[0], x.shape[1] - 1
  pn = 1.0 / n_data
  loss = 0.0
  for b in range(B):
    loss += math.log(x[b, 0] / (x[b, 0] + m * pn + eps))
    for k in range(1, m + 1):
      loss += math.log(m * pn / (x[b, k] + m * pn + eps))
  return -loss / B


# ------------------------------------------------------------------------------------------------
# DKD


def test_dkd_matches_mdistiller_formula_and_its_parts():
  rng = _rng(0)
  zs, zt = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
  y = rng.integers(0, 5, 6)
  ref, ref_t, ref_n = np_dkd(zs, zt, y, 1.3, 6.0, 4.0)
  zs32, zt32 = _f32(zs, zt)
  _close(losses.dkd_loss(zs32, zt32, jnp.asarray(y), alpha=1.3, beta=6.0, temperature=4.0), ref)
  tckd, nckd = losses.dkd_parts(zs32, zt32, jnp.asarray(y), temperature=4.0)
  _close(tckd, ref_t)
  _close(nckd, ref_n)


def test_dkd_kd_equals_tckd_plus_one_minus_teacher_gt_prob_times_nckd_per_example():
  rng = _rng(1)
  T = 2.0
  for i in range(4):
    zs, zt = _f32(rng.normal(size=(1, 7)) * 2, rng.normal(size=(1, 7)) * 2)
    y = jnp.asarray(rng.integers(0, 7, 1))
    tckd, nckd = losses.dkd_parts(zs, zt, y, temperature=T)
    p_gt = jax.nn.softmax(zt / T)[0, y[0]]
    kd = losses.kd_loss(zs, zt, temperature=T)
    _close(tckd + (1 - p_gt) * nckd, kd, rtol=1e-5, atol=1e-5)
    # the same through dkd_loss with alpha = 1, beta = 1 - p_gt
    _close(losses.dkd_loss(zs, zt, y, alpha=1.0, beta=1 - p_gt, temperature=T), kd,
           rtol=1e-5, atol=1e-5)


def test_dkd_stays_finite_with_underflowing_binary_probabilities():
  # the student puts all its mass on a wrong class (p_gt = 0 in float32): torch.log would give -inf
  zs = jnp.array([[-200.0, 200.0, 0.0], [300.0, -300.0, 0.0]])
  zt = jnp.array([[3.0, 1.0, 0.0], [0.0, 400.0, -50.0]])
  y = jnp.array([0, 0])
  f = lambda s: losses.dkd_loss(s, zt, y, alpha=1.0, beta=8.0, temperature=1.0)
  value, grad = jax.value_and_grad(f)(zs)
  assert np.isfinite(float(value)) and float(value) > 100
  assert np.all(np.isfinite(np.asarray(grad)))


# ------------------------------------------------------------------------------------------------
# DIST


def test_dist_matches_numpy_and_is_zero_for_identical_logits():
  rng = _rng(2)
  zs, zt = rng.normal(size=(8, 6)) * 2, rng.normal(size=(8, 6)) * 2
  zs32, zt32 = _f32(zs, zt)
  got = losses.dist_loss(zs32, zt32, beta=0.7, gamma=1.5, temperature=4.0)
  _close(got, np_dist(zs, zt, 0.7, 1.5, 4.0), rtol=1e-4)
  same = losses.dist_loss(zs32, zs32, beta=1.0, gamma=1.0, temperature=1.0)
  _close(same, 0.0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# RKD, PKT


def test_rkd_matches_numpy_loops():
  rng = _rng(3)
  es, et = rng.normal(size=(5, 4)), rng.normal(size=(5, 7)) * 3   # dimensions may differ
  got = losses.rkd_loss(*_f32(es, et), distance_weight=25.0, angle_weight=50.0)
  _close(got, np_rkd(es, et, 25.0, 50.0), rtol=1e-4, atol=1e-5)


def test_rkd_is_invariant_to_scaling_and_translating_the_embeddings():
  rng = _rng(4)
  es, et = _f32(rng.normal(size=(6, 5)), rng.normal(size=(6, 5)))
  base = losses.rkd_loss(es, et, distance_weight=25.0, angle_weight=50.0)
  assert float(base) > 0
  moved = losses.rkd_loss(3.0 * es + 1.5, 0.2 * et - 4.0, distance_weight=25.0, angle_weight=50.0)
  _close(moved, base, rtol=1e-4)
  _close(losses.rkd_loss(es, 2.0 * es + 1.0, distance_weight=1.0, angle_weight=1.0), 0.0, atol=1e-5)


def test_pkt_matches_numpy_and_is_zero_for_identical_embeddings():
  rng = _rng(5)
  es, et = rng.normal(size=(6, 4)), rng.normal(size=(6, 9))
  _close(losses.pkt_loss(*_f32(es, et)), np_pkt(es, et), rtol=1e-4)
  e = _f32(es)[0]
  _close(losses.pkt_loss(e, e), 0.0, atol=1e-7)
  _close(losses.pkt_loss(e, 5.0 * e), 0.0, atol=1e-6)       # cosine kernels: scale-free


# ------------------------------------------------------------------------------------------------
# FitNet, PEFD, SRRL


def test_fitnet_pefd_and_srrl_statm_match_numpy():
  rng = _rng(6)
  fs, ft = rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(3, 4, 5, 2))
  _close(losses.fitnet_loss(*_f32(fs, ft)), np.mean((fs - ft) ** 2))
  a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  cos = [a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i])) for i in range(4)]
  _close(losses.pefd_loss(*_f32(a, b)), np.mean(1 - np.array(cos)))
  ft_small = rng.normal(size=(3, 2, 3, 2))                    # spatial sizes may differ
  ref = np.mean((fs.mean((1, 2)) - ft_small.mean((1, 2))) ** 2)
  _close(losses.srrl_statm_loss(*_f32(fs, ft_small)), ref)
  sig_s, sig_t = rng.normal(size=(3, 10, 2)), rng.normal(size=(3, 4, 2))      # 1-D maps
  _close(losses.srrl_statm_loss(*_f32(sig_s, sig_t)), np.mean((sig_s.mean(1) - sig_t.mean(1)) ** 2))


# ------------------------------------------------------------------------------------------------
# Multi-teacher weights


def test_ebkd_and_camkd_weights_match_numpy_and_their_column_sums():
  rng = _rng(7)
  zt = rng.normal(size=(3, 5, 4)) * 2
  y = rng.integers(0, 4, 5)
  w_eb = losses.ebkd_weights(_f32(zt)[0])
  _close(w_eb, np_ebkd_weights(zt))
  _close(jnp.sum(w_eb, axis=0), np.full(5, 2.0))               # K - 1
  w_ca = losses.camkd_weights(_f32(zt)[0], jnp.asarray(y))
  _close(w_ca, np_camkd_weights(zt, y))
  _close(jnp.sum(w_ca, axis=0), np.ones(5))
  with pytest.raises(ValueError, match="at least 2 teachers"):
    losses.camkd_weights(_f32(zt[:1])[0], jnp.asarray(y))


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_weighted_kd_matches_numpy_and_unit_weights_give_the_mean_kd(reduction):
  rng = _rng(8)
  zs, zt, w = rng.normal(size=(5, 4)), rng.normal(size=(3, 5, 4)) * 2, rng.uniform(size=(3, 5))
  zs32, zt32, w32 = _f32(zs, zt, w)
  got = losses.weighted_kd(zs32, zt32, w32, temperature=3.0, reduction=reduction)
  _close(got, np_weighted_kd(zs, zt, w, 3.0, reduction))
  aver = losses.weighted_kd(zs32, zt32, jnp.ones((3, 5)), temperature=3.0, reduction=reduction)
  kds = [losses.kd_loss(zs32, zt32[k], temperature=3.0, reduction=reduction) for k in range(3)]
  _close(aver, np.mean(kds))


def test_camkd_feature_loss_matches_numpy_and_differentiates_through_the_weights():
  rng = _rng(9)
  B, C = 4, 3
  fs = [rng.normal(size=(B, 2, 2, 3)), rng.normal(size=(B, 2, 2, 5))]
  ft = [rng.normal(size=(B, 2, 2, 3)), rng.normal(size=(B, 2, 2, 5))]
  heads = rng.normal(size=(2, B, C))
  y = rng.integers(0, C, B)
  w = np_camkd_weights(heads, y)
  mse = np.stack([((fs[k] - ft[k]) ** 2).reshape(B, -1).mean(1) for k in range(2)])
  ref = np.sum(w * mse) / (B * 2)
  fs32, ft32 = [_f32(f)[0] for f in fs], [_f32(f)[0] for f in ft]
  got = losses.camkd_feature_loss(fs32, ft32, _f32(heads)[0], jnp.asarray(y))
  _close(got, ref)
  # the weights are not detached: the loss has a gradient w.r.t. the heads' logits
  g = jax.grad(lambda h: losses.camkd_feature_loss(fs32, ft32, h, jnp.asarray(y)))(_f32(heads)[0])
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.max(jnp.abs(g))) > 1e-4


# ------------------------------------------------------------------------------------------------
# CRD


def test_crd_nce_scores_estimate_and_init_bound_match_numpy():
  rng = _rng(10)
  N, B, K, D, T = 20, 3, 4, 8, 0.07
  memory = rng.normal(size=(N, D))
  memory /= np.linalg.norm(memory, axis=1, keepdims=True)
  emb = rng.normal(size=(B, D))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  cidx = rng.integers(0, N, (B, K + 1))
  ref_scores = np.array([[np.exp(memory[cidx[b, k]] @ emb[b] / T) for k in range(K + 1)]
                         for b in range(B)])
  mem32, emb32 = _f32(memory, emb)
  scores = losses.crd_scores(mem32, jnp.asarray(cidx), emb32, temperature=T)
  _close(scores, ref_scores, rtol=1e-4)
  z = losses.crd_estimate_z(scores, num_data=N)
  _close(z, ref_scores.mean() * N, rtol=1e-4)
  x = ref_scores / (ref_scores.mean() * N)
  _close(losses.crd_nce_loss(_f32(x)[0], num_data=N), np_crd_nce(x, N), rtol=1e-5)
  _close(losses.crd_memory_init_bound(128), 1 / math.sqrt(128 / 3), rtol=1e-12)
  init = losses.crd_memory_init(jax.random.PRNGKey(0), 500, 128)
  assert init.shape == (500, 128)
  assert float(jnp.max(jnp.abs(init))) <= losses.crd_memory_init_bound(128)
  _close(jnp.std(init), losses.crd_memory_init_bound(128) / math.sqrt(3), rtol=0.02)
  # gradients flow into the embedding only (the memory is a constant)
  g_mem, g_emb = jax.grad(lambda m, e: jnp.sum(losses.crd_scores(m, cidx, e, temperature=T)),
                          argnums=(0, 1))(mem32, emb32)
  assert float(jnp.max(jnp.abs(g_mem))) == 0 and float(jnp.max(jnp.abs(g_emb))) > 0


def test_crd_memory_update_matches_numpy_and_masked_rows_write_nothing():
  rng = _rng(11)
  memory, emb = rng.normal(size=(6, 3)), rng.normal(size=(3, 3))
  idx = np.array([4, 1, 2])
  ref = memory.copy()
  for b, i in enumerate(idx):
    v = 0.3 * memory[i] + 0.7 * emb[b]
    ref[i] = v / np.linalg.norm(v)
  mem32, emb32 = _f32(memory, emb)
  _close(losses.crd_memory_update(mem32, jnp.asarray(idx), emb32, 0.3), ref)
  # a padding row that repeats a real row's index must not undo that row's update
  idx_pad = jnp.array([4, 1, 4])
  got = losses.crd_memory_update(mem32, idx_pad, emb32, 0.3, mask=jnp.array([1.0, 1.0, 0.0]))
  expected = ref.copy()
  expected[2] = memory[2]
  _close(got, expected)


# ------------------------------------------------------------------------------------------------
# Masks, jit/vmap over runs, gradients


def _mask_case(name, rng):
  """(function of (student..., mask), real inputs, inputs with a garbage row appended)."""
  B = 5
  zs, zt = rng.normal(size=(B, 4)), rng.normal(size=(B, 4))
  y = rng.integers(0, 4, B)
  es, et = rng.normal(size=(B, 3)), rng.normal(size=(B, 6))
  cases = {
      "dkd": (lambda a, b, c, m: losses.dkd_loss(a, b, c, alpha=1.0, beta=8.0, temperature=4.0, mask=m),
              (zs, zt, y)),
      "dist": (lambda a, b, m: losses.dist_loss(a, b, beta=1.0, gamma=2.0, temperature=4.0, mask=m),
               (zs, zt)),
      "rkd": (lambda a, b, m: losses.rkd_loss(a, b, distance_weight=25.0, angle_weight=50.0, mask=m),
              (es, et)),
      "pkt": (lambda a, b, m: losses.pkt_loss(a, b, mask=m), (es, et)),
      "fitnet": (lambda a, b, m: losses.fitnet_loss(a, b, mask=m), (es, es[:, ::-1] * 0.5)),
      "pefd": (lambda a, b, m: losses.pefd_loss(a, b, mask=m), (es, es[:, ::-1] * 0.5)),
      "weighted_kd": (lambda a, b, c, m: losses.weighted_kd(a, b, c, temperature=4.0, mask=m),
                      (zs, np.stack([zt, zs[::-1]]), rng.uniform(size=(2, B)))),
      "crd_nce": (lambda a, m: losses.crd_nce_loss(a, num_data=50, mask=m),
                  (rng.uniform(0.01, 0.2, size=(B, 4)),)),
  }
  f, real = cases[name]

  def garbage(a):                                 # one more row of large random values
    a = np.asarray(a)
    if a.dtype.kind == "i":
      return np.concatenate([a, [0]])
    junk = rng.normal(size=(1, *a.shape[1:])) * 50
    return np.concatenate([a, np.abs(junk) if name == "crd_nce" else junk])

  if name == "weighted_kd":                         # teachers' logits and weights: (K, B, ...)
    padded = (garbage(real[0]), np.concatenate([real[1], rng.normal(size=(2, 1, 4)) * 50], 1),
              np.concatenate([real[2], rng.uniform(size=(2, 1)) * 9], 1))
  else:
    padded = tuple(garbage(a) for a in real)
  return f, real, padded


def _jnp(a):
  a = np.asarray(a)
  return jnp.asarray(a) if a.dtype.kind == "i" else jnp.asarray(a.astype(np.float32))


@pytest.mark.parametrize("name", ["dkd", "dist", "rkd", "pkt", "fitnet", "pefd", "weighted_kd",
                                  "crd_nce"])
def test_a_masked_out_garbage_row_changes_nothing(name):
  f, real, padded = _mask_case(name, _rng(12))
  B = np.asarray(real[0]).shape[0]
  want = f(*[_jnp(a) for a in real], None)
  mask = jnp.asarray(np.r_[np.ones(B), 0.0].astype(np.float32))
  got = f(*[_jnp(a) for a in padded], mask)
  _close(got, want, rtol=1e-5, atol=1e-6)
  # an all-ones mask is the unmasked loss
  _close(f(*[_jnp(a) for a in real], jnp.ones(B)), want, rtol=1e-6, atol=1e-7)


def test_jit_vmap_over_runs_with_traced_hyperparameters_equals_each_run():
  rng = _rng(13)
  R, B, C = 3, 4, 5
  zs, zt = _f32(rng.normal(size=(R, B, C)), rng.normal(size=(R, B, C)))
  es, et = _f32(rng.normal(size=(R, B, 3)), rng.normal(size=(R, B, 6)))
  y = jnp.asarray(rng.integers(0, C, (R, B)))
  hp = _f32(rng.uniform(0.5, 2, R), rng.uniform(1, 8, R), rng.uniform(1, 4, R))
  mask = jnp.asarray((rng.uniform(size=(R, B)) > 0.3).astype(np.float32)).at[:, 0].set(1.0)

  def all_losses(zs, zt, y, es, et, a, b, T, m):
    return jnp.stack([
        losses.dkd_loss(zs, zt, y, alpha=a, beta=b, temperature=T, mask=m),
        losses.dist_loss(zs, zt, beta=a, gamma=b, temperature=T, mask=m),
        losses.rkd_loss(es, et, distance_weight=a, angle_weight=b, mask=m),
        losses.pkt_loss(es, et, mask=m),
        losses.weighted_kd(zs, jnp.stack([zt, zt[::-1]]), losses.camkd_weights(
            jnp.stack([zt, zt[::-1]]), y), temperature=T, mask=m),
    ])

  got = jax.jit(jax.vmap(all_losses))(zs, zt, y, es, et, *hp, mask)
  one_run = jax.jit(all_losses)
  for r in range(R):
    want = one_run(zs[r], zt[r], y[r], es[r], et[r], hp[0][r], hp[1][r], hp[2][r], mask[r])
    _close(got[r], want, rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_also_in_degenerate_cases():
  # Finite, not small: as in the authors' PyTorch code, DIST's gradient at a constant softmax row
  # is ~1/eps (1e-8 added to the cosine denominator) and RKD's angle gradient at coinciding
  # embeddings is ~1/eps of F.normalize (1e-12).
  B, C = 4, 5
  uniform = jnp.zeros((B, C))                     # a zero-initialised student: uniform softmax
  rng = _rng(14)
  zt = _f32(rng.normal(size=(B, C)))[0]
  y = jnp.asarray(rng.integers(0, C, B))
  dup = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])    # repeated and zero rows
  et = _f32(rng.normal(size=(B, 3)))[0]

  def total(zs, es):
    return (losses.dkd_loss(zs, zt, y, alpha=1.0, beta=8.0, temperature=4.0)
            + losses.dist_loss(zs, zt, beta=1.0, gamma=1.0, temperature=4.0)
            + losses.rkd_loss(es, et, distance_weight=25.0, angle_weight=50.0)
            + losses.pkt_loss(es, et) + losses.pefd_loss(es, et[:, :2]))

  value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(uniform, dup)
  assert np.isfinite(float(value))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  # the same with identical student and teacher (every term at its minimum)
  g = jax.jit(jax.grad(lambda e: losses.rkd_loss(e, dup, distance_weight=1.0, angle_weight=1.0)
                       + losses.pkt_loss(e, dup)))(dup)
  assert np.all(np.isfinite(np.asarray(g)))
