"""The student_kd objective (`jkd.kd`) against direct numpy formulas (REFERENCE §4)."""

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd import kd

K, B = 5, 6


def _config(**loss):
  c = mc.ConfigDict({"train": {"epochs": 10}, "teachers": {"order": ("signal", "image")},
                     "loss": {"name": "ce", "label_smoothing": 0.0, "gamma": 2.0,
                              **kd.defaults().to_dict()}})
  c.loss.update(loss)
  return c


def _hp(c):
  return {f"loss.{k}": jnp.float32(v) for k, v in c.loss.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kd(zs, zt, t, k):   # T² KL(p_t || p_s), PyTorch KLDivLoss() 'mean': / (B K)
  lt, ls = _log_softmax(zt / t), _log_softmax(zs / t)
  return t * t * np.sum(np.exp(lt) * (lt - ls)) / (zs.shape[0] * k)


def _gram(f):
  q = f.reshape(f.shape[0], -1).astype(np.float64)
  return q @ q.T


def _rownorm(g):
  return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def batch():
  r = np.random.default_rng(0)
  zs, z1, z2 = (r.normal(size=(B, K)).astype(np.float32) * s for s in (1, 2, 3))
  fs = [r.normal(size=(B, 8, 4)).astype(np.float32), r.normal(size=(B, 4, 8)).astype(np.float32),
        r.normal(size=(B, 2, 16)).astype(np.float32)]
  f1 = [r.normal(size=(B, 8, 6)).astype(np.float32), r.normal(size=(B, 4, 12)).astype(np.float32)]
  f2 = [r.normal(size=(B, 4, 4, 3)).astype(np.float32), r.normal(size=(B, 2, 2, 7)).astype(np.float32)]
  y = r.integers(0, K, B)
  return zs, z1, z2, fs, f1, f2, y


def test_dual_teacher_sp_matches_numpy(batch):
  zs, z1, z2, fs, f1, f2, y = batch
  c = _config(lam=0.9, alpha=0.3, temperature=4.0, beta=200.0, sp_layers=(1, 3))
  obj = kd.make(c)
  # teachers return only the needed layers (1 and 3) in that order
  total, terms = obj(jnp.asarray(zs), tuple(map(jnp.asarray, fs)), jnp.asarray(y), _hp(c),
                     {"epoch": 0, "teachers": [(z1, (f1[0], f1[1])), (z2, (f2[0], f2[1]))]})
  ce = -np.mean(_log_softmax(zs.astype(np.float64))[np.arange(B), y])
  kd1, kd2 = _kd(zs, z1, 4.0, K), _kd(zs, z2, 4.0, K)
  sp = 0.0
  for s_map, t1, t2 in ((fs[0], f1[0], f2[0]), (fs[2], f1[1], f2[1])):
    g_t = _rownorm(0.7 * _gram(t1) + 0.3 * _gram(t2))
    sp += np.sum((_rownorm(_gram(s_map)) - g_t) ** 2) / B ** 2
  want = 0.1 * ce + 0.9 * (0.7 * kd1 + 0.3 * kd2) + 200.0 * sp
  np.testing.assert_allclose(float(terms["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(terms["kd_signal"]), kd1, rtol=1e-5)
  np.testing.assert_allclose(float(terms["kd_image"]), kd2, rtol=1e-5)
  np.testing.assert_allclose(float(terms["sp"]), sp, rtol=1e-4)
  np.testing.assert_allclose(float(total), want, rtol=1e-4)


def test_single_teacher_logits_layer_and_batchmean(batch):
  zs, z1, _, fs, _, _, y = batch
  c = _config(lam=0.5, temperature=2.0, reduction="batchmean", beta=10.0, sp_layers=(4,))
  c.teachers.order = ("signal",)
  total, terms = kd.make(c)(jnp.asarray(zs), tuple(fs), jnp.asarray(y), _hp(c),
                            {"epoch": 0, "teachers": [(z1, ())]})
  ce = -np.mean(_log_softmax(zs.astype(np.float64))[np.arange(B), y])
  kdv = _kd(zs, z1, 2.0, K) * K
  sp = np.sum((_rownorm(_gram(zs)) - _rownorm(_gram(z1))) ** 2) / B ** 2
  np.testing.assert_allclose(float(total), 0.5 * ce + 0.5 * kdv + 10.0 * sp, rtol=1e-4)


def test_soft_labels_enter_ce(batch):
  zs, z1, z2, fs, _, _, y = batch
  soft = np.eye(K, dtype=np.float32)[y] * 0.6 + np.eye(K, dtype=np.float32)[(y + 1) % K] * 0.4
  c = _config(lam=0.0, beta=0.0)
  _, terms = kd.make(c)(jnp.asarray(zs), tuple(fs), jnp.asarray(soft), _hp(c),
                        {"epoch": 0, "teachers": [(z1, ()), (z2, ())]})
  np.testing.assert_allclose(float(terms["ce"]), -np.mean(np.sum(soft * _log_softmax(zs), -1)),
                             rtol=1e-5)


def test_jafari_annealing_phases(batch):
  zs, z1, z2, fs, _, _, y = batch
  c = _config(annealing="jafari", tau_max=4, phase1_epochs=8, alpha=0.25, beta=0.0)
  obj = jax.jit(kd.make(c))
  teach = [(z1, ()), (z2, ())]
  for epoch, temp in ((0, 4), (3, 3), (7, 1)):
    total, _ = obj(zs, tuple(fs), y, _hp(c), {"epoch": jnp.int32(epoch), "teachers": teach})
    phi = 1 - (temp - 1) / 4
    want = np.mean((zs - phi * (0.75 * z1 + 0.25 * z2)) ** 2)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
  total, _ = obj(zs, tuple(fs), y, _hp(c), {"epoch": jnp.int32(8), "teachers": teach})
  np.testing.assert_allclose(float(total), -np.mean(_log_softmax(zs)[np.arange(B), y]), rtol=1e-5)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="loss.reduction"):
    kd.make(_config(reduction="sum"))
  with pytest.raises(ValueError, match="sp_layers"):
    kd.make(_config(sp_layers=(0, 1)))
