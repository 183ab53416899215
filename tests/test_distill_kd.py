"""KD (`jkd.distill.kd`): the multi-teacher weightings (EBKD, CA-MKD) and the weighted KD against
numpy, and the term's fixed weighting through the objective (CE + Σ_k w_k KD_k, the lab's
dual-teacher loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import distill, losses
from jkd.distill import Outputs, kd
from jkd.distill import Context

from distill_setup import kd_config, per_run_hp
from numpy_ref import rng as _rng, close as _close, f32 as _f32, np_log_softmax, np_softmax, np_kl_rows, np_kd as _np_kd


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


def test_ebkd_and_camkd_weights_match_numpy_and_their_column_sums():
  rng = _rng(7)
  zt = rng.normal(size=(3, 5, 4)) * 2
  y = rng.integers(0, 4, 5)
  w_eb = kd.ebkd_weights(_f32(zt)[0])
  _close(w_eb, np_ebkd_weights(zt))
  _close(jnp.sum(w_eb, axis=0), np.full(5, 2.0))               # K - 1
  w_ca = kd.camkd_weights(_f32(zt)[0], jnp.asarray(y))
  _close(w_ca, np_camkd_weights(zt, y))
  _close(jnp.sum(w_ca, axis=0), np.ones(5))
  with pytest.raises(ValueError, match="at least 2 teachers"):
    kd.camkd_weights(_f32(zt[:1])[0], jnp.asarray(y))


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_weighted_kd_matches_numpy_and_unit_weights_give_the_mean_kd(reduction):
  rng = _rng(8)
  zs, zt, w = rng.normal(size=(5, 4)), rng.normal(size=(3, 5, 4)) * 2, rng.uniform(size=(3, 5))
  zs32, zt32, w32 = _f32(zs, zt, w)
  got = kd.weighted_kd(zs32, zt32, w32, temperature=3.0, reduction=reduction)
  _close(got, np_weighted_kd(zs, zt, w, 3.0, reduction))
  aver = kd.weighted_kd(zs32, zt32, jnp.ones((3, 5)), temperature=3.0, reduction=reduction)
  kds = [losses.kd_loss(zs32, zt32[k], temperature=3.0, reduction=reduction) for k in range(3)]
  _close(aver, np.mean(kds))


# ----------------------------------------------------------------------------- fixed weights

def _log_softmax(z):
  z = z.astype(np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _dual(lam, alpha, temperature, reduction="mean"):
  """The lab's dual-teacher loss (1 − λ) CE + λ [(1 − α) KD(z_s, z_a) + α KD(z_s, z_b)] as the
  objective of `ce` (weight 1 − λ) and `kd` (weight λ) with loss.alpha = α."""
  c = kd_config(("ce", "kd"), ce={"weight": 1.0 - lam},
                kd={"weight": lam, "temperature": temperature, "reduction": reduction})
  c.loss.alpha = alpha
  return c


def test_ce_plus_fixed_weight_kd_is_the_lab_dual_teacher_loss():
  """(Re-pointed from the removed `losses.dual_teacher_loss` / `multi_teacher_kd`: the live
  objective computes the same.)"""
  rng = _rng(8)
  zs, zsig, zimg = (rng.normal(size=(6, 5)).astype(np.float32) * 2 for _ in range(3))
  y = rng.integers(0, 5, 6)
  lam, alpha, T = 0.9, 0.7, 4.0
  ce = -np.mean(_log_softmax(zs)[np.arange(6), y])
  kd_sig, kd_img = _np_kd(zs, zsig, T, "mean"), _np_kd(zs, zimg, T, "mean")
  ref = (1 - lam) * ce + lam * ((1 - alpha) * kd_sig + alpha * kd_img)
  c = _dual(lam, alpha, T)
  student = (jnp.asarray(zs), (jnp.zeros((6, 4)),))
  ctx = Context(epoch=jnp.int32(0),
         teachers=[Outputs(jnp.asarray(zsig)), Outputs(jnp.asarray(zimg))])
  total, terms, _ = distill.make_objective(c)(*student, jnp.asarray(y), per_run_hp(c), ctx)
  _close(total, ref)
  _close(terms["ce"], ce)
  for z, want in ((zsig, kd_sig), (zimg, kd_img)):
    _close(losses.kd_loss(jnp.asarray(zs), jnp.asarray(z), temperature=T, reduction="mean"), want)
  _close(terms["kd"], (1 - alpha) * kd_sig + alpha * kd_img)
  # any teacher weights (teachers.<name>.weight, loss.alpha = -1), used as given
  c = kd_config(("kd",), kd={"weight": 1.0, "temperature": T})
  hp = per_run_hp(c, **{"teachers.a.weight": 0.2, "teachers.b.weight": 0.5})
  _, terms, _ = distill.make_objective(c)(*student, jnp.asarray(y), hp, ctx)
  per = [losses.kd_loss(jnp.asarray(zs), jnp.asarray(z), temperature=T) for z in (zsig, zimg)]
  _close(per, [_np_kd(zs, zsig, T), _np_kd(zs, zimg, T)])
  _close(terms["kd"], 0.2 * _np_kd(zs, zsig, T) + 0.5 * _np_kd(zs, zimg, T))
  with pytest.raises(distill.TermError, match="weighs two teachers"):   # α: one weight each
    bad = _dual(lam, alpha, T)
    distill.check(bad.loss, [("a", bad.teachers.a.model)], bad.teachers.a.model, 3)


def test_dual_teacher_loss_vmaps_over_per_run_hyperparameters():
  """jit(vmap) over runs with traced λ, α, T and masks equals each run: the primitives, and the
  objective (unmasked) equals them."""
  rng = _rng(9)
  runs = 3
  zs, zsig, zimg = (jnp.asarray(rng.normal(size=(runs, 4, 5)).astype(np.float32)) for _ in range(3))
  y = jnp.asarray(rng.integers(0, 5, (runs, 4)))
  mask = jnp.asarray(np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1]], np.float32))
  lam, alpha = jnp.array([0.9, 0.99, 0.5]), jnp.array([0.1, 0.5, 0.9])
  T = jnp.array([1.0, 4.0, 2.0])

  def f(zs, y, zsig, zimg, lam, alpha, T, mask):
    kd = ((1 - alpha) * losses.kd_loss(zs, zsig, temperature=T, mask=mask)
          + alpha * losses.kd_loss(zs, zimg, temperature=T, mask=mask))
    return (1 - lam) * losses.cross_entropy(zs, y, mask=mask) + lam * kd

  got = jax.jit(jax.vmap(f))(zs, y, zsig, zimg, lam, alpha, T, mask)
  for r in range(runs):
    _close(got[r], f(zs[r], y[r], zsig[r], zimg[r], float(lam[r]), float(alpha[r]), float(T[r]),
                     mask[r]), rtol=1e-5)
  c = _dual(0.9, 0.5, 4.0, "batchmean")
  obj = distill.make_objective(c)

  def objective(zs, y, zsig, zimg, lam, alpha, T):
    hp = dict(per_run_hp(c), **{"loss.ce.weight": 1 - lam, "loss.kd.weight": lam,
                                "loss.alpha": alpha, "loss.kd.temperature": T})
    ctx = Context(epoch=jnp.int32(0), teachers=[Outputs(zsig), Outputs(zimg)])
    return obj(zs, (jnp.zeros((4, 2)),), y, hp, ctx)[0]

  got = jax.jit(jax.vmap(objective))(zs, y, zsig, zimg, lam, alpha, T)
  for r in range(runs):
    _close(got[r], f(zs[r], y[r], zsig[r], zimg[r], lam[r], alpha[r], T[r], None), rtol=1e-5)
