"""CA-MKD's intermediate term (`jkd.distill.camkd`): the authors' chained alignment of the
student map to each teacher in turn, the independent option, and the term against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import distill
from jkd.distill import Info, Outputs, camkd
from jkd.distill import Context

from distill_setup import (FB, as_np, bn_train, conv, feature_world, head_features, head_logits,
                           kd_config, per_run_hp, pool, relu)
from numpy_ref import f32 as _f32, np_log_softmax

B, K = 6, 3


def _close(a, b, rtol=2e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                             atol=atol)


def np_camkd_weights(zt, y):
  K, B, _ = zt.shape
  ce = np.array([[-np_log_softmax(zt[k, b])[y[b]] for b in range(B)] for k in range(K)])
  return (1 - np.exp(ce) / np.exp(ce).sum(0)) / (K - 1)


def _adaptive_pool(x, out):
  """F.adaptive_avg_pool1d of (B, L, C) to `out` (also upwards: cells repeat)."""
  n = x.shape[1]
  cells = [x[:, (i * n) // out:-(-((i + 1) * n) // out)].mean(1) for i in range(out)]
  return np.stack(cells, 1)


def _upsample(x, out):
  """F.interpolate(mode='linear', align_corners=False) of (B, L, C) to `out` > L."""
  n = x.shape[1]
  pos = np.clip((np.arange(out) + 0.5) * n / out - 0.5, 0, n - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n - 1)
  f = (pos - lo)[None, :, None]
  return x[:, lo] * (1 - f) + x[:, hi] * f


def _align_np(f_s, lengths, chained):
  """`CalWeight.forward`'s loop: `feat_s` reassigned per teacher when chained; the branch on the
  original map's length."""
  out, x = [], f_s
  for t in lengths:
    src = x if chained else f_s
    x = _adaptive_pool(src, t) if f_s.shape[1] >= t else _upsample(src, t)
    out.append(x)
  return out


@pytest.mark.parametrize("s_len,lengths", [(8, (4, 6, 2)), (4, (8, 2)), (6, (3, 6))])
@pytest.mark.parametrize("chained", [True, False])
def test_align_matches_numpy_chained_and_independent(s_len, lengths, chained):
  f_s = np.random.default_rng(s_len).normal(size=(2, s_len, 3))
  got = camkd.align(jnp.float32(f_s), [(t,) for t in lengths], chained)
  want = _align_np(f_s, lengths, chained)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
  if chained and s_len == 8:                   # 8 -> 4 -> 6 re-pools the 4, not the student map
    assert not np.allclose(np.asarray(got[1]), _adaptive_pool(f_s, 6))


# ----------------------------------------------------------------------------- the term


def camkd_np(f_s, teach, tv, p, y, chained):
  """L_inter = Σ_k Σ_b w_kb mean(F_k − f_t,k)² / (B K),
  w = (1 − softmax_k CE(head_k(F_k))) / (K − 1)."""
  aligned = _align_np(f_s, [t.stages[0].shape[1] for t in teach], chained)
  mse, ce = [], []
  for k, x in enumerate(aligned):
    q = p[str(k)]
    f = relu(bn_train(x @ q["conv1"]["kernel"][0] + q["conv1"]["bias"], q["bn1"]))
    f_t = head_features(tv[k], teach[k].stages[0])
    mse.append(((f - f_t) ** 2).reshape(f.shape[0], -1).mean(1))
    ce.append(-np_log_softmax(head_logits(tv[k], f))[np.arange(f.shape[0]), y])
  ce = np.stack(ce)
  kt = len(aligned)
  weights = (1 - np.exp(ce) / np.exp(ce).sum(0)) / (kt - 1)
  return np.sum(weights * np.stack(mse)) / (f_s.shape[0] * kt)


@pytest.fixture(scope="module")
def world():
  """Student last map (B, 4, 8); teacher a: a WRN head (batch_norm, fc) on a map of length 2;
  teacher b: a ResNet head (fc) on a map of length 4, so chaining re-samples a's alignment."""
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  student = (n(B, K), (n(B, 8, 4), n(B, 4, 8), n(B, 8)))
  teach = [Outputs(n(B, K) * 2, {distill.LAST: n(B, 2, 12)}, n(B, 12)),
           Outputs(n(B, K) * 2, {distill.LAST: n(B, 4, 6)}, n(B, 6))]
  tv = [{"params": {"batch_norm": {"scale": 1 + 0.3 * n(12), "bias": 0.2 * n(12)},
                    "fc": {"kernel": n(12, K), "bias": n(K)}},
         "batch_stats": {"batch_norm": {"mean": 0.3 * n(12), "var": 0.5 + jnp.abs(n(12))}}},
        {"params": {"fc": {"kernel": n(6, K), "bias": n(K)}}, "batch_stats": {}}]
  labels = jnp.asarray(r.integers(0, K, B), jnp.int32)
  return dict(student=student, teach=teach, tv=tv, labels=labels)


def _run(w, chained, epoch=1):
  c = kd_config(("camkd",), camkd={"chained": chained})
  info = Info(teacher_models=tuple(c.teachers[t].model for t in c.distill.teachers),
              teachers=tuple(w["teach"]), teacher_variables=w["tv"])
  term_vars = distill.init(c.loss, jax.random.PRNGKey(0), Outputs.of(*w["student"]), w["teach"], info)
  ctx = Context(epoch=jnp.int32(epoch), teachers=w["teach"], distill=term_vars)
  total, terms, _ = distill.make_objective(c)(*w["student"], w["labels"], per_run_hp(c), ctx)
  return term_vars, total, terms


@pytest.mark.parametrize("chained", [True, False])
def test_term_matches_numpy_chained_by_default_and_independent_as_an_option(world, chained):
  w = world
  term_vars, total, terms = _run(w, chained)
  f_s = np.asarray(w["student"][1][1], np.float64)
  want = camkd_np(f_s, as_np(w["teach"]), as_np(w["tv"]), as_np(term_vars["params"]["camkd"]),
                  np.asarray(w["labels"]), chained)
  np.testing.assert_allclose(float(terms["camkd"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(total), 50.0 * want, rtol=1e-4)
  other = camkd_np(f_s, as_np(w["teach"]), as_np(w["tv"]), as_np(term_vars["params"]["camkd"]),
                   np.asarray(w["labels"]), not chained)
  assert abs(other - want) > 1e-4 * abs(want)        # the two alignments differ on this world


def test_chained_is_the_default_and_static():
  assert distill.TERMS["camkd"].defaults["chained"] is True
  c = kd_config(("camkd",))
  assert "loss.camkd.chained" not in distill.per_run_keys(c.loss, ("a", "b"))


# ----------------------------------------------------------------------------- the pure loss; the
# feature world (a WRN teacher head, maps of other lengths)

def test_camkd_feature_loss_matches_numpy_and_differentiates_through_the_weights():
  rng = np.random.default_rng(9)
  B, C = 4, 3
  fs = [rng.normal(size=(B, 2, 2, 3)), rng.normal(size=(B, 2, 2, 5))]
  ft = [rng.normal(size=(B, 2, 2, 3)), rng.normal(size=(B, 2, 2, 5))]
  heads = rng.normal(size=(2, B, C))
  y = rng.integers(0, C, B)
  w = np_camkd_weights(heads, y)
  mse = np.stack([((fs[k] - ft[k]) ** 2).reshape(B, -1).mean(1) for k in range(2)])
  ref = np.sum(w * mse) / (B * 2)
  fs32, ft32 = [_f32(f)[0] for f in fs], [_f32(f)[0] for f in ft]
  got = camkd.camkd_feature_loss(fs32, ft32, _f32(heads)[0], jnp.asarray(y))
  _close(got, ref)
  # the weights are not detached: the loss has a gradient w.r.t. the heads' logits
  g = jax.grad(lambda h: camkd.camkd_feature_loss(fs32, ft32, h, jnp.asarray(y)))(_f32(heads)[0])
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.max(jnp.abs(g))) > 1e-4


def test_term_matches_numpy_on_the_feature_world_and_is_dropped_in_the_first_epoch():
  """Weights (1 − softmax_k CE(teacher head on F_k)) / (K − 1), Σ_kb w mse / (B K)."""
  w = feature_world(("camkd",))
  index = w["pool"][:FB]
  total, terms, _ = w["run"](w["term_vars"], index)
  p = as_np(w["term_vars"]["params"])
  _, (f1, f2, emb) = as_np(w["student"])
  teach, tv = as_np(w["teach"]), as_np(w["tv"])
  y = np.asarray(w["labels"])[np.asarray(index)]
  # chained, as the authors' CalWeight: teacher b's alignment (the student map is as long as
  # its, so adaptive pooling) starts from teacher a's pooled map: each cell repeated twice
  mse, ce, x = [], [], f2
  for k, length in ((0, 2), (1, 4)):
    q = p["camkd"][str(k)]
    x = pool(x, length) if x.shape[1] >= length else np.repeat(x, length // x.shape[1], 1)
    f = relu(bn_train(conv(x, q["conv1"]), q["bn1"]))
    f_t = head_features(tv[k], teach[k].stages[0])
    mse.append(((f - f_t) ** 2).reshape(FB, -1).mean(1))
    ce.append(-np_log_softmax(head_logits(tv[k], f))[np.arange(FB), y])
  ce = np.stack(ce)
  weights = (1 - np.exp(ce) / np.exp(ce).sum(0)) / 1
  want = np.sum(weights * np.stack(mse)) / (FB * 2)
  np.testing.assert_allclose(float(terms["camkd"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(total), 50.0 * want, rtol=1e-4)
  # CA-MKD is dropped in the first epoch (start_epoch=1)
  _, terms0, _ = w["run"](w["term_vars"], index, epoch=0)
  assert float(terms0["camkd"]) == 0.0
