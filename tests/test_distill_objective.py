"""The KD student's objective (`jkd.distill`): the listed terms, weighted, against numpy formulas."""

import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd import distill
from jkd.distill import Outputs
from jkd.distill import Context

K, B = 5, 6


def _config(terms=("ce", "kd", "sp"), teachers=("signal", "image"), epochs=10, **sections):
  loss = distill.loss_defaults(terms)
  for key, value in sections.items():
    if isinstance(value, dict):
      loss[key].update(value)
    else:
      loss[key] = value
  return mc.ConfigDict({"train": {"epochs": epochs}, "distill": {"teachers": tuple(teachers)},
                        "teachers": {t: {"weight": 1.0} for t in teachers}, "loss": loss})


def _hp(c, **over):
  hp = {}
  for key in distill.per_run_keys(c.loss, tuple(c.distill.teachers)):
    section, *rest = key.split(".")
    node = c[section]
    for part in rest:
      node = node[part]
    hp[key] = jnp.float32(over.get(key, node))
  return hp


def _out(z, maps=(), embedding=None):
  return Outputs(jnp.asarray(z), {i + 1: jnp.asarray(m) for i, m in enumerate(maps) if m is not None},
                 None if embedding is None else jnp.asarray(embedding))


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


def _student(zs, fs):
  return jnp.asarray(zs), (*map(jnp.asarray, fs), jnp.zeros((B, 4)))


def test_dual_teacher_sp_matches_numpy(batch):
  zs, z1, z2, fs, f1, f2, y = batch
  c = _config(alpha=0.3, ce={"weight": 0.1}, kd={"weight": 0.9, "reduction": "mean"},
              sp={"weight": 200.0, "layers": (1, 3)})
  obj = distill.make_objective(c)
  teach = [_out(z1, (f1[0], None, f1[1])), _out(z2, (f2[0], None, f2[1]))]
  total, terms, _ = obj(*_student(zs, fs), jnp.asarray(y), _hp(c),
                        Context(epoch=0, teachers=teach))
  ce = -np.mean(_log_softmax(zs.astype(np.float64))[np.arange(B), y])
  kd1, kd2 = _kd(zs, z1, 4.0, K), _kd(zs, z2, 4.0, K)
  sp = 0.0
  for s_map, t1, t2 in ((fs[0], f1[0], f2[0]), (fs[2], f1[1], f2[1])):
    g_t = _rownorm(0.7 * _gram(t1) + 0.3 * _gram(t2))
    sp += np.sum((_rownorm(_gram(s_map)) - g_t) ** 2) / B ** 2
  want = 0.1 * ce + 0.9 * (0.7 * kd1 + 0.3 * kd2) + 200.0 * sp
  np.testing.assert_allclose(float(terms["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(terms["kd"]), 0.7 * kd1 + 0.3 * kd2, rtol=1e-5)
  np.testing.assert_allclose(float(terms["sp"]), sp, rtol=1e-4)
  np.testing.assert_allclose(float(total), want, rtol=1e-4)


def test_teacher_weights_without_alpha_and_three_teachers(batch):
  zs, z1, z2, fs, _, _, y = batch
  z3 = z1[::-1] + z2
  c = _config(terms=("kd",), teachers=("a", "b", "c"), kd={"weight": 1.0})
  hp = _hp(c, **{"teachers.a.weight": 0.2, "teachers.b.weight": 0.3, "teachers.c.weight": 0.5})
  total, _, _ = distill.make_objective(c)(*_student(zs, fs), jnp.asarray(y), hp,
                                          Context(epoch=0, teachers=[_out(z) for z in (z1, z2, z3)]))
  want = sum(w * _kd(zs, z, 4.0, K) * K for w, z in ((0.2, z1), (0.3, z2), (0.5, z3)))
  np.testing.assert_allclose(float(total), want, rtol=1e-5)


def test_a_term_is_on_because_it_is_listed_not_because_of_its_weight(batch):
  zs, z1, z2, fs, f1, f2, y = batch
  listed = _config(terms=("ce", "kd"))
  _, terms, _ = distill.make_objective(listed)(*_student(zs, fs), jnp.asarray(y), _hp(listed),
                                               Context(epoch=0, teachers=[_out(z1), _out(z2)]))
  assert set(terms) == {"ce", "kd"}
  with pytest.raises(distill.TermError, match="'sp' is not in loss.terms"):
    bad = _config(terms=("ce", "kd"), sp={"weight": 200.0})
    distill.check(bad.loss, [("signal", mc.ConfigDict({"ndim": 1})),
                             ("image", mc.ConfigDict({"ndim": 2}))], mc.ConfigDict({"ndim": 1}), 10)


def test_single_teacher_logits_layer_and_batchmean(batch):
  zs, z1, _, fs, _, _, y = batch
  c = _config(teachers=("signal",), ce={"weight": 0.5},
              kd={"weight": 0.5, "temperature": 2.0, "reduction": "batchmean"},
              sp={"weight": 10.0, "layers": (4,)})
  total, _, _ = distill.make_objective(c)(*_student(zs, fs), jnp.asarray(y), _hp(c),
                                          Context(epoch=0, teachers=[_out(z1)]))
  ce = -np.mean(_log_softmax(zs.astype(np.float64))[np.arange(B), y])
  kdv = _kd(zs, z1, 2.0, K) * K
  sp = np.sum((_rownorm(_gram(zs)) - _rownorm(_gram(z1))) ** 2) / B ** 2
  np.testing.assert_allclose(float(total), 0.5 * ce + 0.5 * kdv + 10.0 * sp, rtol=1e-4)


def test_soft_labels_enter_ce(batch):
  zs, z1, z2, fs, _, _, y = batch
  soft = np.eye(K, dtype=np.float32)[y] * 0.6 + np.eye(K, dtype=np.float32)[(y + 1) % K] * 0.4
  c = _config(terms=("ce",))
  _, terms, _ = distill.make_objective(c)(*_student(zs, fs), jnp.asarray(soft), _hp(c),
                                          Context(epoch=0, teachers=[_out(z1), _out(z2)]))
  np.testing.assert_allclose(float(terms["ce"]), -np.mean(np.sum(soft * _log_softmax(zs), -1)),
                             rtol=1e-5)


PAIRS = [("signal", mc.ConfigDict({"ndim": 1})), ("image", mc.ConfigDict({"ndim": 2}))]
STUDENT = mc.ConfigDict({"ndim": 1})


@pytest.mark.parametrize("sections,match", [
    ({"kd": {"reduction": "sum"}}, "loss.kd.reduction"),
    ({"sp": {"layers": (0, 1)}}, "loss.sp.layers"),
    ({"terms": ("ce", "kd", "nope")}, "'nope' is not a distillation term"),
    ({"terms": ("annealing", "ce")}, "includes its own cross-entropy"),
    ({"terms": ("ce", "at")}, None),
    ({"terms": ("ce", "fitnet")}, "teacher 'image' is 2-D but the student"),
])
def test_bad_settings_are_named(sections, match):
  c = _config(**sections)
  if match is None:   # AT with one teacher of the student's rank is fine
    distill.check(c.loss, PAIRS, STUDENT, 10)
    with pytest.raises(distill.TermError, match="no teacher has the student's rank"):
      distill.check(c.loss, PAIRS[1:], STUDENT, 10)
    return
  with pytest.raises(distill.TermError, match=match):
    distill.check(c.loss, PAIRS, STUDENT, 10)


def test_alpha_needs_two_teachers():
  c = _config(teachers=("a", "b", "c"), alpha=0.5)
  with pytest.raises(distill.TermError, match="loss.alpha"):
    distill.check(c.loss, [(n, STUDENT) for n in "abc"], STUDENT, 10)
