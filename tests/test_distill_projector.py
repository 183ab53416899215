"""The role of the projector (`jkd.distill.projector`, Miles & Mikolajczyk): the log-sum distance
after batch normalisation against numpy (with a mask), the term with two teachers of different
widths against numpy (projector, BN of both sides, |·|⁴, log of the sum, KD at T = 1), the
gradient into the projectors, every per-run key, a bad `bn_eps`."""

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd import distill
from jkd.distill import TermError, projector
from jkd.distill import Context

from distill_setup import embedding_world, kd_config, per_run_hp

B, C, D_S, D_T = 6, 3, 8, (12, 5)


def _bn(x, eps=1e-4):                    # BatchNorm1d(affine=False), training mode
  return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _config(**over):
  return kd_config(("ce", "projector"), projector=over)


@pytest.fixture(scope="module")
def world():
  return embedding_world(_config(), teacher_scale=2.0, batch=B, classes=C, d_s=D_S, d_t=D_T)


def test_projector_loss_matches_numpy_with_and_without_mask():
  r = np.random.default_rng(1)
  a, b = r.normal(size=(7, 5)), r.normal(size=(7, 5)) * 3 + 1
  want = np.log(np.sum(np.abs(_bn(a) - _bn(b)) ** 4))
  np.testing.assert_allclose(float(projector.projector_loss(jnp.float32(a), jnp.float32(b))), want,
                             rtol=1e-5)
  mask = np.array([1, 0, 1, 1, 0, 1, 1.0])
  keep = mask > 0
  want = np.log(np.sum(np.abs(_bn(a[keep]) - _bn(b[keep])) ** 4))
  got = projector.projector_loss(jnp.float32(a), jnp.float32(b), mask=jnp.float32(mask))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  got = projector.projector_loss(jnp.float32(a), jnp.float32(b), power=2.0)
  np.testing.assert_allclose(float(got), np.log(np.sum((_bn(a) - _bn(b)) ** 2)), rtol=1e-5)
  g = jax.grad(lambda t: projector.projector_loss(jnp.float32(a), t))(jnp.float32(b))
  assert not np.any(np.asarray(g))                      # the teacher is a target


def test_term_matches_numpy_with_two_teachers_of_different_widths(world):
  w = world
  _, terms, _ = w["run"](w["term_vars"])
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), w["term_vars"]["params"]["projector"])
  emb = np.asarray(w["student"][1][-1], np.float64)
  z_s = np.asarray(w["student"][0], np.float64)
  want = 0.0
  for k, (wt, t) in enumerate(zip((1.0, 2.0), w["teach"])):
    proj = emb @ p[str(k)]["kernel"] + p[str(k)]["bias"]
    assert proj.shape == (B, D_T[k])
    e_t, z_t = np.asarray(t.embedding, np.float64), np.asarray(t.logits, np.float64)
    rep = np.log(np.sum(np.abs(_bn(proj) - _bn(e_t)) ** 4))
    lt = _log_softmax(z_t)
    kd = np.mean(np.sum(np.exp(lt) * (lt - _log_softmax(z_s)), 1))      # T = 1, batchmean
    want += wt * (2.0 * rep + kd)
  np.testing.assert_allclose(float(terms["projector"]), want, rtol=1e-4)
  bound = 1 / np.sqrt(D_S)                               # PyTorch's default Linear init
  for k in ("0", "1"):
    assert np.abs(p[k]["kernel"]).max() <= bound and np.abs(p[k]["bias"]).max() <= bound
    assert np.abs(p[k]["kernel"]).max() > 0.5 * bound


def test_gradients_reach_the_projectors(world):
  w = world
  c = w["c"]
  obj = distill.make_objective(c)

  def f(params):
    term_vars = {"params": params, "batch_stats": w["term_vars"]["batch_stats"]}
    ctx = Context(epoch=jnp.int32(0), teachers=w["teach"], distill=term_vars)
    return obj(*w["student"], w["labels"], per_run_hp(c), ctx)[0]

  g = jax.grad(f)(w["term_vars"]["params"])["projector"]
  for k in ("0", "1"):
    assert float(jnp.abs(g[k]["kernel"]).sum()) > 0


def test_per_run_keys(world):
  """(That each of them changes the objective: tests/test_distill_registry.py.)"""
  keys = distill.per_run_keys(world["c"].loss, ("a", "b"))
  assert {"loss.projector.power", "loss.projector.temperature", "teachers.b.weight"} <= set(keys)


@pytest.mark.parametrize("eps", [0.0, -1e-3])
def test_bad_bn_eps_is_refused(eps):
  c = _config(bn_eps=eps)
  with pytest.raises(TermError, match=r"loss.projector.bn_eps=.* must be a positive number"):
    distill.check(c.loss, [("a", mc.ConfigDict({"name": "wrn10_1", "ndim": 1}))],
                  mc.ConfigDict({"name": "wrn10_1", "ndim": 1}), 3)


def test_identical_student_and_teacher_give_a_finite_value_and_gradient():
  """The authors' log of the sum has no eps: identical rows give log 0 = −inf there. Here the
  sum is floored at float32's smallest normal number; a normal input's value is unchanged."""
  b = jnp.float32(np.random.default_rng(3).normal(size=(5, 4)))
  v, g = jax.value_and_grad(lambda a: projector.projector_loss(a, b))(b)
  assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(float(v), np.log(np.finfo(np.float32).tiny), rtol=1e-6)
  a = np.asarray(b) + 1e-3 * np.random.default_rng(4).normal(size=(5, 4))
  want = np.log(np.sum(np.abs(_bn(a) - _bn(np.asarray(b))) ** 4))       # tiny but normal: as is
  np.testing.assert_allclose(float(projector.projector_loss(jnp.float32(a), b)), want, rtol=1e-3)
