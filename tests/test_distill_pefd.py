"""PEFD (`jkd.distill.pefd`, chenyd7/PEFD): the loss and the term through the engine against numpy
(ReLU, mean of the projectors, cosine without eps, teacher weights), PyTorch's default Linear
init of the projectors, the refused bad `projectors`, the gradient into the projectors, the
per-run weight."""

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd import distill
from jkd.distill import Outputs, TermError, pefd

from distill_setup import embedding_world, kd_config, per_run_hp

B, K, D_S, D_T = 6, 3, 8, (12, 5)


def _cos_np(a, b):
  return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _config(**pefd):
  return kd_config(("ce", "pefd"), pefd=pefd)


@pytest.fixture(scope="module")
def world():
  return embedding_world(_config(), batch=B, classes=K, d_s=D_S, d_t=D_T)


def test_pefd_loss_matches_numpy_with_and_without_mask():
  r = np.random.default_rng(1)
  a, b = r.normal(size=(5, 7)), r.normal(size=(5, 7))
  want = np.mean(1.0 - _cos_np(a, b))
  np.testing.assert_allclose(float(pefd.pefd_loss(jnp.float32(a), jnp.float32(b))), want,
                             rtol=1e-5)
  mask = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
  want = np.sum(mask * (1.0 - _cos_np(a, b))) / mask.sum()
  got = pefd.pefd_loss(jnp.float32(a), jnp.float32(b), mask=jnp.float32(mask))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # the teacher is a target: no gradient flows into it
  g = jax.grad(lambda t: pefd.pefd_loss(jnp.float32(a), t))(jnp.float32(b))
  assert not np.any(np.asarray(g))


def test_term_matches_numpy_with_two_teachers_of_different_widths(world):
  w = world
  total, terms, stats = w["run"](w["term_vars"])
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), w["term_vars"]["params"]["pefd"])
  emb = np.asarray(w["student"][1][-1], np.float64)
  want = 0.0
  for k, (wt, t) in enumerate(zip((1.0, 2.0), w["teach"])):
    assert sorted(p[str(k)]) == ["0", "1", "2"]                  # three projectors, no fourth
    proj = np.mean([np.maximum(emb @ q["kernel"] + q["bias"], 0.0) for q in p[str(k)].values()], 0)
    assert proj.shape == (B, D_T[k])
    want += wt * np.mean(1.0 - _cos_np(np.asarray(t.embedding, np.float64), proj))
  np.testing.assert_allclose(float(terms["pefd"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(total), float(terms["ce"]) + 25.0 * want, rtol=1e-5)
  assert "pefd" not in stats


def test_projectors_have_pytorch_default_linear_init():
  d_s, d_t = 64, 40
  c = _config()
  s = Outputs(jnp.zeros((2, K)), {}, jnp.zeros((2, d_s)))
  term_vars = distill.init(c.loss, jax.random.PRNGKey(3), s, [Outputs(jnp.zeros((2, K)), {},
                                                                 jnp.zeros((2, d_t)))])
  bound = 1.0 / np.sqrt(d_s)
  ps = term_vars["params"]["pefd"]["0"]
  assert len(ps) == 3
  for q in ps.values():
    kern, bias = np.asarray(q["kernel"]), np.asarray(q["bias"])
    assert kern.shape == (d_s, d_t) and bias.shape == (d_t,)
    for a in (kern, bias):
      assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound
    np.testing.assert_allclose(kern.std(), bound / np.sqrt(3.0), rtol=0.1)   # uniform
  assert not np.array_equal(ps["0"]["kernel"], ps["1"]["kernel"])            # independent


@pytest.mark.parametrize("bad", [0, -2, True])   # a type-safe int key: no floats get in
def test_bad_projectors_is_refused_in_one_line(bad):
  c = _config()
  c.loss.pefd.projectors = bad
  pairs = [(n, c.teachers[n].model) for n in c.distill.teachers]
  with pytest.raises(TermError, match=r"loss\.pefd\.projectors=.*positive integer") as e:
    distill.check(c.loss, pairs, mc.ConfigDict({"name": "wrn10_1", "ndim": 1}), 3)
  assert "\n" not in str(e.value) and "--config.loss.pefd.projectors" in str(e.value)


def test_gradients_reach_the_projectors_and_the_weight_is_per_run(world):
  w = world
  c = w["c"]
  assert {"loss.pefd.weight", "teachers.a.weight", "teachers.b.weight"} <= set(
      distill.per_run_keys(c.loss, ("a", "b")))
  assert distill.TERMS["pefd"].per_run == ("weight",)            # projectors: static

  def total(params):
    term_vars = {"params": {**w["term_vars"]["params"], "pefd": params}, "batch_stats": w["term_vars"]["batch_stats"]}
    return w["run"](term_vars)[0]

  grads = jax.grad(total)(w["term_vars"]["params"]["pefd"])
  for k in ("0", "1"):
    for j in ("0", "1", "2"):
      assert np.any(np.asarray(grads[k][j]["kernel"])), (k, j)
  base, terms, _ = w["run"](w["term_vars"])
  other, _, _ = w["run"](w["term_vars"], per_run_hp(c, **{"loss.pefd.weight": 10.0}))
  np.testing.assert_allclose(float(base - other), 15.0 * float(terms["pefd"]), rtol=1e-4)
  moved, _, _ = w["run"](w["term_vars"], per_run_hp(c, **{"teachers.b.weight": 0.5}))
  assert float(moved) != float(base)


def test_pefd_loss_matches_the_cosine_formula():
  rng = np.random.default_rng(6)
  rng.normal(size=(2, 3, 4, 5, 2))     # the FitNet draws the combined test made first
  a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  cos = [a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i])) for i in range(4)]
  np.testing.assert_allclose(float(pefd.pefd_loss(jnp.float32(a), jnp.float32(b))),
                             np.mean(1 - np.array(cos)), rtol=2e-5, atol=1e-6)
