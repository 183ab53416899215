"""CRD (`jkd.distill.crd`): its pure NCE pieces and memory banks against numpy, the term against
numpy over two steps (the banks move, Z freezes), its negatives, its bad settings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import distill
from jkd.distill import Outputs, crd

from distill_setup import FB as B, FN as N, as_np, contrast, crd_np, feature_world
from numpy_ref import ATOL, RTOL, f32 as _f32


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                             atol=atol)


def np_crd_nce(x, n_data, eps=1e-7):
  B, m = x.shape[0], x.shape[1] - 1
  pn = 1.0 / n_data
  loss = 0.0
  for b in range(B):
    loss += math.log(x[b, 0] / (x[b, 0] + m * pn + eps))
    for k in range(1, m + 1):
      loss += math.log(m * pn / (x[b, k] + m * pn + eps))
  return -loss / B


@pytest.fixture(scope="module")
def world():
  return feature_world(("crd",))


def test_crd_nce_scores_estimate_and_init_bound_match_numpy():
  rng = np.random.default_rng(10)
  N, B, K, D, T = 20, 3, 4, 8, 0.07
  memory = rng.normal(size=(N, D))
  memory /= np.linalg.norm(memory, axis=1, keepdims=True)
  emb = rng.normal(size=(B, D))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  cidx = rng.integers(0, N, (B, K + 1))
  ref_scores = np.array([[np.exp(memory[cidx[b, k]] @ emb[b] / T) for k in range(K + 1)]
                         for b in range(B)])
  mem32, emb32 = _f32(memory, emb)
  scores = crd.crd_scores(mem32, jnp.asarray(cidx), emb32, temperature=T)
  _close(scores, ref_scores, rtol=1e-4)
  z = crd.crd_estimate_z(scores, num_data=N)
  _close(z, ref_scores.mean() * N, rtol=1e-4)
  x = ref_scores / (ref_scores.mean() * N)
  _close(crd.crd_nce_loss(_f32(x)[0], num_data=N), np_crd_nce(x, N), rtol=1e-5)
  _close(crd.crd_memory_init_bound(128), 1 / math.sqrt(128 / 3), rtol=1e-12)
  init = crd.crd_memory_init(jax.random.PRNGKey(0), 500, 128)
  assert init.shape == (500, 128)
  assert float(jnp.max(jnp.abs(init))) <= crd.crd_memory_init_bound(128)
  _close(jnp.std(init), crd.crd_memory_init_bound(128) / math.sqrt(3), rtol=0.02)
  # gradients flow into the embedding only (the memory is a constant)
  g_mem, g_emb = jax.grad(lambda m, e: jnp.sum(crd.crd_scores(m, cidx, e, temperature=T)),
                          argnums=(0, 1))(mem32, emb32)
  assert float(jnp.max(jnp.abs(g_mem))) == 0 and float(jnp.max(jnp.abs(g_emb))) > 0


def test_crd_memory_update_matches_numpy_and_masked_rows_write_nothing():
  rng = np.random.default_rng(11)
  memory, emb = rng.normal(size=(6, 3)), rng.normal(size=(3, 3))
  idx = np.array([4, 1, 2])
  ref = memory.copy()
  for b, i in enumerate(idx):
    v = 0.3 * memory[i] + 0.7 * emb[b]
    ref[i] = v / np.linalg.norm(v)
  mem32, emb32 = _f32(memory, emb)
  _close(crd.crd_memory_update(mem32, jnp.asarray(idx), emb32, 0.3), ref)
  # a padding row that repeats a real row's index must not undo that row's update
  idx_pad = jnp.array([4, 1, 4])
  got = crd.crd_memory_update(mem32, idx_pad, emb32, 0.3, mask=jnp.array([1.0, 1.0, 0.0]))
  expected = ref.copy()
  expected[2] = memory[2]
  _close(got, expected)


def test_term_matches_numpy(world):
  """Σ_k w_k (NCE(student vs teacher bank) + NCE(teacher vs student bank)), n = 20."""
  w = world
  index = w["pool"][:B]
  total, terms, _ = w["run"](w["term_vars"], index)
  p, s = as_np(w["term_vars"]["params"]), as_np(w["term_vars"]["batch_stats"])
  _, (_, _, emb) = as_np(w["student"])
  teach = as_np(w["teach"])
  wt = (1.0, 2.0)                                        # teachers.a.weight, teachers.b.weight
  c = contrast(w, index)
  want = sum(wt[k] * crd_np(p["crd"][str(k)], s["crd"][str(k)], emb, teach[k].embedding, c,
                            20, 0.07)[0] for k in range(2))
  np.testing.assert_allclose(float(terms["crd"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(total), 0.8 * want, rtol=1e-4)


def test_crd_banks_move_after_scoring_and_z_freezes(world):
  w = world
  i1, i2 = w["pool"][:B], w["pool"][B:2 * B]
  _, terms1, stats1 = w["run"](w["term_vars"], i1)
  p, s0 = as_np(w["term_vars"]["params"]["crd"]), as_np(w["term_vars"]["batch_stats"]["crd"])
  _, (_, _, emb) = as_np(w["student"])
  teach = as_np(w["teach"])
  for k in range(2):
    _, (z_s, z_t), mem = crd_np(p[str(k)], s0[str(k)], emb, teach[k].embedding, contrast(w, i1),
                              20, 0.07)
    got = as_np(stats1["crd"][str(k)])
    np.testing.assert_allclose([got["z_s"], got["z_t"]], [z_s, z_t], rtol=1e-4)
    for name in ("memory_s", "memory_t"):
      np.testing.assert_allclose(got[name], mem[name], rtol=1e-4, atol=1e-6)
      untouched = np.setdiff1d(np.arange(N), np.asarray(i1))
      np.testing.assert_array_equal(got[name][untouched], s0[str(k)][name][untouched])
  # the next step scores against the moved banks with the frozen Z, and keeps Z
  own2 = {"params": w["term_vars"]["params"], "batch_stats": {**w["term_vars"]["batch_stats"], **stats1}}
  _, terms2, stats2 = w["run"](own2, i2, key=4)
  s1 = as_np(stats1["crd"])
  want = 0.0
  for k, wt in ((0, 1.0), (1, 2.0)):
    z = (s1[str(k)]["z_s"], s1[str(k)]["z_t"])
    want += wt * crd_np(p[str(k)], s1[str(k)], emb, teach[k].embedding, contrast(w, i2, key=4),
                      20, 0.07, z)[0]
    assert float(stats2["crd"][str(k)]["z_s"]) == float(stats1["crd"][str(k)]["z_s"])
    assert float(stats2["crd"][str(k)]["z_t"]) == float(stats1["crd"][str(k)]["z_t"])
  np.testing.assert_allclose(float(terms2["crd"]), want, rtol=1e-4)
  assert float(terms2["crd"]) != float(terms1["crd"])


def test_crd_negatives_are_other_class_training_windows():
  labels = jnp.asarray(np.r_[np.zeros(10), np.ones(6), np.full(4, 2), np.zeros(5)], jnp.int32)
  pool = jnp.asarray(np.r_[np.arange(20), 0, 0, 0], jnp.int32)      # windows 20.. never train
  batch = jnp.asarray([0, 12, 17, 3])
  draw = jax.jit(jax.vmap(lambda key, k: crd.negatives(key, labels[batch], pool, jnp.int32(20),
                                                        labels, k), in_axes=(0, None)),
                 static_argnums=1)
  lab, keys = np.asarray(labels), jax.random.split(jax.random.PRNGKey(0), 40)
  neg = np.asarray(draw(keys, 10))                                  # (40, 4, 10)
  for row, i in zip(neg[0], np.asarray(batch)):
    assert (row < 20).all() and (lab[row] != lab[i]).all()
    assert len(set(row.tolist())) == 10                 # without replacement: enough exist
  assert set(neg[:, 0].ravel().tolist()) == set(range(10, 20))     # uniform: all of them
  assert (lab[neg] != lab[np.asarray(batch)][None, :, None]).all()
  # class 0 has 10 others in training: 12 negatives come with replacement, still other-class
  neg = np.asarray(draw(keys[:1], 12))[0, 0]
  assert (lab[neg] != 0).all() and (neg < 20).all() and len(set(neg.tolist())) <= 10


def test_crd_nce_k_must_fit_the_training_windows(world):
  w = world
  loss = distill.loss_defaults(("crd",))
  loss.crd.nce_k = 21
  with pytest.raises(distill.TermError, match="loss.crd.nce_k=21 exceeds the 20 training"):
    distill.init(loss, jax.random.PRNGKey(0), Outputs.of(*w["student"]), w["teach"], w["info"])
