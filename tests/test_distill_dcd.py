"""DCD (`jkd.distill.dcd`, giakoumoglou/distillers distillers/DCD.py): the loss against numpy
(with and without a mask), the term through the engine with two teachers of different widths
against numpy from the params `distill.init` made (PyTorch's default Linear init, tau 1, b 0), the
gradient into the heads and into tau, the clamp of exp(tau), the scalar bias being inert (a
shift of every logit), every per-run key changing the objective, the refused bad static keys,
and one engine epoch training the heads and tau in the state."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd import config as config_lib
from jkd import distill
from jkd.engine import runs as runs_lib
from jkd.engine import setup as setup_lib
from jkd.engine import state as state_lib
from jkd.engine import teachers as teachers_lib
from jkd.engine import train as train_lib
from jkd.distill import Outputs, TermError, dcd
from jkd.models import layers

from distill_setup import embedding_world, TinyWRN, kd_config, per_run_hp

B, K, D_S, D_T = 6, 3, 8, (12, 5)


def _log_softmax(z, axis):
  z = z - z.max(axis, keepdims=True)
  return z - np.log(np.exp(z).sum(axis, keepdims=True))


def _dcd_np(f_s, f_t, tau, b, alpha, max_tau=10.0):
  """DCDLoss.forward, literally: normalise, logits, CE on arange, kl_div(batchmean)."""
  a = f_s / np.maximum(np.linalg.norm(f_s, axis=1, keepdims=True), 1e-12)
  t = f_t / np.maximum(np.linalg.norm(f_t, axis=1, keepdims=True), 1e-12)
  n = a.shape[0]
  logits = a @ t.T * np.clip(np.exp(tau), 0.0, max_tau) + b
  p1 = _log_softmax(logits, 1)
  contrast = -np.mean(p1[np.arange(n), np.arange(n)])
  p2 = np.exp(_log_softmax(logits, 0)).T                  # softmax(logits, dim=0).t()
  invariance = np.sum(p2 * (np.log(p2) - p1)) / n          # kl_div(p1, p2, 'batchmean')
  return contrast + alpha * invariance


def _config(**dcd):
  return kd_config(("ce", "dcd"), dcd=dcd)


@pytest.fixture(scope="module")
def world():
  """tau and b trained (`learn_scale=True`): they are params, as jkd had them before."""
  return embedding_world(_config(learn_scale=True), batch=B, classes=K, d_s=D_S, d_t=D_T)


@pytest.fixture(scope="module")
def fixed():
  """The default, the authors' trainer: tau and b fixed at init, in batch_stats."""
  return embedding_world(_config(), batch=B, classes=K, d_s=D_S, d_t=D_T)


def _with(term_vars, k, **scalars):
  p = jax.tree.map(lambda x: x, term_vars["params"])
  p["dcd"][str(k)] = {**p["dcd"][str(k)], **{n: jnp.float32(v) for n, v in scalars.items()}}
  return {"params": p, "batch_stats": term_vars["batch_stats"]}


def test_dcd_loss_matches_numpy_with_and_without_mask():
  r = np.random.default_rng(1)
  f_s, f_t = r.normal(size=(5, 7)), r.normal(size=(5, 7))
  for tau, b, alpha in ((1.0, 0.0, 0.5), (0.3, 0.7, 2.0), (3.0, -1.0, 0.5)):   # 3: e^3 > 10
    got = dcd.dcd_loss(jnp.float32(f_s), jnp.float32(f_t), tau=jnp.float32(tau),
                          bias=jnp.float32(b), alpha=alpha)
    np.testing.assert_allclose(float(got), _dcd_np(f_s, f_t, tau, b, alpha), rtol=1e-5)
  mask = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
  junk_s, junk_t = f_s.copy(), f_t.copy()
  junk_s[1], junk_t[4] = 1e6, -1e6                         # masked-out rows have no influence
  got = dcd.dcd_loss(jnp.float32(junk_s), jnp.float32(junk_t), tau=jnp.float32(0.3),
                        bias=jnp.float32(0.0), alpha=0.5, mask=jnp.float32(mask))
  keep = mask > 0
  np.testing.assert_allclose(float(got), _dcd_np(f_s[keep], f_t[keep], 0.3, 0.0, 0.5), rtol=1e-5)
  g = jax.grad(lambda x: dcd.dcd_loss(x, jnp.float32(f_t), tau=jnp.float32(0.3),
                                         bias=jnp.float32(0.0), mask=jnp.float32(mask)))(
      jnp.float32(junk_s))
  assert np.all(np.isfinite(g)) and not np.any(np.asarray(g)[~keep])


def test_tau_gets_gradient_below_the_clamp_none_above_and_the_bias_is_inert():
  r = np.random.default_rng(2)
  f_s, f_t = jnp.float32(r.normal(size=(6, 4))), jnp.float32(r.normal(size=(6, 4)))
  f = lambda tau, b: dcd.dcd_loss(f_s, f_t, tau=tau, bias=b, alpha=0.5)
  g_tau, g_b = jax.grad(f, argnums=(0, 1))(jnp.float32(1.0), jnp.float32(0.0))
  assert abs(float(g_tau)) > 1e-3 and abs(float(g_b)) < 1e-6
  # above log(max_tau) the scale is max_tau and tau gets no gradient (torch clamp)
  g_tau, _ = jax.grad(f, argnums=(0, 1))(jnp.float32(3.0), jnp.float32(0.0))
  assert float(g_tau) == 0.0
  at_bound = float(f(jnp.float32(np.log(10.0)), 0.0))
  np.testing.assert_allclose(float(f(jnp.float32(3.0), 0.0)), at_bound, rtol=1e-6)
  # a scalar bias shifts every logit of a row alike: neither softmax sees it
  np.testing.assert_allclose(float(f(jnp.float32(1.0), 5.0)), float(f(jnp.float32(1.0), 0.0)),
                             rtol=1e-5)


@pytest.mark.parametrize("learn", [False, True])
def test_heads_and_scalars_at_init(learn):
  c = _config(learn_scale=learn)
  d_s, d_t = 64, 40
  s = Outputs(jnp.zeros((2, K)), {}, jnp.zeros((2, d_s)))
  term_vars = distill.init(c.loss, jax.random.PRNGKey(3), s, [Outputs(jnp.zeros((2, K)), {},
                                                                 jnp.zeros((2, d_t)))])
  p = term_vars["params"]["dcd"]["0"]
  scalars = p if learn else term_vars["batch_stats"]["dcd"]["0"]
  assert sorted(p) == (["b", "embed_s", "embed_t", "tau"] if learn else ["embed_s", "embed_t"])
  assert float(scalars["tau"]) == 1.0 and float(scalars["b"]) == 0.0
  for name, d in (("embed_s", d_s), ("embed_t", d_t)):
    kern, bias = np.asarray(p[name]["kernel"]), np.asarray(p[name]["bias"])
    assert kern.shape == (d, 128) and bias.shape == (128,)
    bound = 1.0 / np.sqrt(d)
    for a in (kern, bias):
      assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound
  if learn:
    assert term_vars["batch_stats"]["dcd"] == {}


def test_term_matches_numpy_with_two_teachers_of_different_widths(world):
  w = world
  total, terms, stats = w["run"](w["term_vars"])
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), w["term_vars"]["params"]["dcd"])
  emb = np.asarray(w["student"][1][-1], np.float64)
  want = 0.0
  for k, (wt, t) in enumerate(zip((1.0, 2.0), w["teach"])):
    q = p[str(k)]
    assert q["embed_t"]["kernel"].shape == (D_T[k], 128)
    f_s = emb @ q["embed_s"]["kernel"] + q["embed_s"]["bias"]
    f_t = np.asarray(t.embedding, np.float64) @ q["embed_t"]["kernel"] + q["embed_t"]["bias"]
    want += wt * _dcd_np(f_s, f_t, q["tau"], q["b"], 0.5)
  np.testing.assert_allclose(float(terms["dcd"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(total), float(terms["ce"]) + 1.0 * want, rtol=1e-5)
  assert "dcd" not in stats
  # the clamp holds through the term: tau above log(10) gives the value at log(10)
  hi, lo = _with(w["term_vars"], 1, tau=4.0), _with(w["term_vars"], 1, tau=np.log(10.0))
  np.testing.assert_allclose(float(w["run"](hi)[1]["dcd"]), float(w["run"](lo)[1]["dcd"]),
                             rtol=1e-5)


def test_gradients_reach_the_heads_and_tau_but_not_above_the_clamp(world):
  w = world

  def total(params, term_vars):
    term_vars = {"params": {**term_vars["params"], "dcd": params}, "batch_stats": term_vars["batch_stats"]}
    return w["run"](term_vars)[0]

  grads = jax.grad(total)(w["term_vars"]["params"]["dcd"], w["term_vars"])
  for k in ("0", "1"):
    for head in ("embed_s", "embed_t"):
      assert np.any(np.asarray(grads[k][head]["kernel"])), (k, head)
    assert abs(float(grads[k]["tau"])) > 1e-4, k
    assert abs(float(grads[k]["b"])) < 1e-5, k              # inert, as in the authors' code
  clamped = _with(w["term_vars"], 0, tau=3.0)
  grads = jax.grad(total)(clamped["params"]["dcd"], clamped)
  assert float(grads["0"]["tau"]) == 0.0 and abs(float(grads["1"]["tau"])) > 1e-4


def test_by_default_tau_and_b_stay_at_init_through_a_decayed_sgd_step(fixed, world):
  """The authors' trainer never hands tau and b to the optimiser: by default they are not params
  (no gradient, no weight decay) and the term hands them back unchanged; `learn_scale=True`
  trains them. One SGD step with weight decay on each term's params shows both."""
  import optax
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.5))

  def step(w):
    def total(params):
      return w["run"]({"params": {**w["term_vars"]["params"], "dcd": params},
                       "batch_stats": w["term_vars"]["batch_stats"]})[0]
    params = w["term_vars"]["params"]["dcd"]
    g = jax.grad(total)(params)
    upd, _ = tx.update(g, tx.init(params), params)
    return optax.apply_updates(params, upd), w["run"](w["term_vars"])[2]

  params, stats = step(fixed)
  assert all(sorted(params[k]) == ["embed_s", "embed_t"] for k in ("0", "1"))
  for k in ("0", "1"):
    assert float(stats["dcd"][k]["tau"]) == 1.0 and float(stats["dcd"][k]["b"]) == 0.0
  params, stats = step(world)
  assert "dcd" not in stats
  for k in ("0", "1"):
    assert float(params[k]["tau"]) != 1.0, k                 # trained and decayed
  # the default's value is the learned option's at the same (initial) tau and b
  np.testing.assert_allclose(float(fixed["run"](fixed["term_vars"])[1]["dcd"]),
                             float(world["run"](world["term_vars"])[1]["dcd"]), rtol=1e-6)


def test_per_run_keys_and_the_weight_scales_the_term(world):
  """(That each per-run key changes the objective: tests/test_distill_registry.py.)"""
  w = world
  c = w["c"]
  keys = distill.per_run_keys(c.loss, ("a", "b"))
  assert {"loss.dcd.weight", "loss.dcd.alpha", "loss.dcd.max_tau", "teachers.a.weight",
          "teachers.b.weight"} <= set(keys)
  assert distill.TERMS["dcd"].per_run == ("weight", "alpha", "max_tau")
  base, terms, _ = w["run"](w["term_vars"])
  moved, _, _ = w["run"](w["term_vars"], per_run_hp(c, **{"loss.dcd.weight": 3.0}))
  np.testing.assert_allclose(float(moved - base), 2.0 * float(terms["dcd"]), rtol=1e-4)


def _check(c):
  pairs = [(n, c.teachers[n].model) for n in c.distill.teachers]
  distill.check(c.loss, pairs, mc.ConfigDict({"name": "wrn10_1", "ndim": 1}), 3)


@pytest.mark.parametrize("key,bad,match", [
    ("feat_dim", 0, r"loss\.dcd\.feat_dim=0 must be a positive integer"),
    ("feat_dim", -2, r"loss\.dcd\.feat_dim=-2 must be a positive integer"),
    ("feat_dim", True, r"loss\.dcd\.feat_dim=True must be a positive integer"),
    ("init_tau", float("nan"), r"loss\.dcd\.init_tau=nan must be a finite number"),
    ("init_bias", float("inf"), r"loss\.dcd\.init_bias=inf must be a finite number"),
])
def test_bad_static_values_are_refused_in_one_line(key, bad, match):
  c = _config()
  c.loss.dcd[key] = bad
  with pytest.raises(TermError, match=match) as e:
    _check(c)
  assert "\n" not in str(e.value)
  _check(_config())                                          # the defaults pass


def test_static_keys_are_not_per_run():
  keys = distill.per_run_keys(_config().loss, ("a", "b"))
  assert not {"loss.dcd.feat_dim", "loss.dcd.init_tau", "loss.dcd.init_bias",
              "loss.dcd.learn_scale"} & set(keys)
  assert distill.ranges(_config().loss, ("a", "b"))["loss.dcd.max_tau"] == "> 0"


class _Tiny(nn.Module):
  """A student with one stage map and its pooled embedding (width 6)."""

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(layers.BatchNorm()(layers.Conv(6, 3, padding=1)(x), train))
    emb = layers.global_avg_pool(h)
    return layers.Linear(K, name="fc")(emb), (h, emb)


def test_engine_trains_the_heads_and_tau_and_restore_leaves_them_out():
  """With `learn_scale=True` (the default's fixed tau is checked above)."""
  L, C, NW = 8, 3, 40
  c = config_lib.base()
  c.train.update(batch_size=8, epochs=2)
  c.optim.update(schedule="constant", lr=0.05)
  c.loss = distill.loss_defaults(("ce", "kd", "dcd"))
  c.loss.dcd.feat_dim = 16
  c.loss.dcd.learn_scale = True
  c.distill = mc.ConfigDict({"teachers": ("a",)})
  c.teachers = mc.ConfigDict({"a": teachers_lib.spec({"name": "wrn10_1", "ndim": 1})})
  r = np.random.default_rng(1)
  x = jnp.asarray(r.normal(size=(NW, L, C)), jnp.float32)
  y = jnp.asarray(r.integers(0, K, NW), jnp.int32)
  ts = [teachers_lib.Teacher("a", TinyWRN(K), c.teachers.a)]
  v = ts[0].model.init(jax.random.PRNGKey(10), x[:2], train=False)
  tvars = [jax.tree.map(lambda a: np.asarray(a)[None], v)]             # one run
  train_idx = np.r_[np.arange(24), np.zeros(4, int)].astype(np.int32)
  run = runs_lib.Run(0, 0, 1, {})
  hp = jax.tree.map(jnp.asarray, runs_lib.hparams(c, [run]))
  inputs = train_lib.Runs(key=state_lib.init_keys(np.array([1])),
                          train=jnp.asarray(train_idx)[None],
                          train_count=jnp.asarray([24], jnp.int32), mean=jnp.zeros((1, C)),
                          std=jnp.ones((1, C)), hp=hp)
  model = _Tiny()
  term_init, _ = setup_lib._term_init(c, model, ts, (L, C), num_windows=NW, train_windows=24)
  state = train_lib.init_state(model, c, inputs.key, jnp.zeros((1, L, C)), inputs.hp, None, term_init,
                               tvars)
  init = jax.tree.map(np.asarray, state.params["distill"]["dcd"]["0"])
  assert init["embed_s"]["kernel"].shape == (1, 6, 16)             # (runs, d_s, feat_dim)
  assert init["embed_t"]["kernel"].shape == (1, 5, 16)
  teacher_outputs = teachers_lib.make_teacher_outputs(ts, [False], distill.teacher_needs(c.loss))
  step = train_lib.Step(model, c, distill.make_objective(c), K, teacher_outputs)
  epoch = train_lib.make_train_epoch(step, 3)
  state, terms = epoch(jax.tree.map(jnp.asarray, state), train_lib.Data(x, y),
                       inputs.replace(teachers=tvars), 1)
  assert np.all(np.isfinite(np.asarray(terms["loss"]))) and not np.asarray(state.failed)[0]
  after = jax.tree.map(np.asarray, state.params["distill"]["dcd"]["0"])
  for part in ("embed_s", "embed_t"):
    assert not np.array_equal(after[part]["kernel"], init[part]["kernel"]), part
  assert after["tau"][0] != init["tau"][0] and abs(float(after["b"][0])) < 1e-6   # b: inert
