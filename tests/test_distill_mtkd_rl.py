"""MTKD-RL (`jkd.distill.mtkd_rl`): the agent's weights, the term's value in the first and later
epochs, the stored rewards and the agent's SGD schedule, each against numpy (the agent's gradient
by central differences in float64); teachers of another rank; the named bad settings; and one
engine epoch that trains the embeds and the agent."""

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
from jkd.distill import Info, Outputs, mtkd_rl
from jkd.models import layers
from jkd.distill import Context

from distill_setup import TinyWRN, per_run_hp

B, C, HIDDEN, EPS = 6, 3, 4, 1e-5
# teachers: a (1-D WRN, last map half the student's length), b (1-D ResNet, same length),
# c (2-D: no map to match, only its state and logit weights)
MODELS = {"a": {"name": "wrn10_1", "ndim": 1}, "b": {"name": "resnet18", "ndim": 1},
          "c": {"name": "wrn10_1", "ndim": 2}}


# ----------------------------------------------------------------------------- numpy references

def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(z_s, z_t, t):
  p = _softmax(z_t / t)
  return t * t * np.sum(p * (np.log(p) - _log_softmax(z_s / t)), -1)


def _ce(z, y):
  return -_log_softmax(z)[np.arange(len(y)), y]


def _embed(x, p):                       # Conv1×1 (bias) – BN (train) – ReLU, any rank
  h = x @ p["conv1"]["kernel"].reshape(x.shape[-1], -1) + p["conv1"]["bias"]
  axes = tuple(range(h.ndim - 1))
  h = (h - h.mean(axes)) / np.sqrt(h.var(axes) + EPS) * p["bn1"]["scale"] + p["bn1"]["bias"]
  return np.maximum(h, 0.0)


def _weights(ag, states, sizes):
  k = len(sizes)
  off = np.cumsum([0, *sizes[:-1]])
  h = np.maximum(states @ ag["stem"], 0.0)
  hl = _softmax(h @ ag["logit_kernel"] + ag["logit_bias"])
  hf = _softmax(h @ ag["feature_kernel"] + ag["feature_bias"])
  conf = (1 - _softmax(states[:, off + 2])) / (k - 1)
  if "logit_factor" in ag:
    lf, ff = _softmax(ag["logit_factor"]), _softmax(ag["feature_factor"])
    return (lf[0] * hl + lf[1] * conf + lf[2] * _softmax(states[:, off + 1]),
            ff[0] * hf + ff[1] * conf + ff[2] * _softmax(states[:, off]))
  return (hl + conf + _softmax(states[:, off + 1])) / 3, (hf + conf + _softmax(states[:, off])) / 3


def _agent_loss(ag, states, r, sizes):
  a, v = _weights(ag, states, sizes)
  return np.mean(-r[:, None] * np.log(a)) + np.mean(-r[:, None] * np.log(v))


def _sgd(ag, states, r, sizes, lr, h=1e-6):
  """One SGD step with the gradient by central differences."""
  new = {}
  for name, p in ag.items():
    g = np.zeros_like(p)
    for i in np.ndindex(p.shape):
      up, dn = {**ag, name: p.copy()}, {**ag, name: p.copy()}
      up[name][i] += h
      dn[name][i] -= h
      g[i] = (_agent_loss(up, states, r, sizes) - _agent_loss(dn, states, r, sizes)) / (2 * h)
    new[name] = p - lr * g
  return new


def _reference(w, term_vars, z_s, epoch):
  """(value, state, normalised reward) of the term, in float64."""
  f64 = lambda a: np.asarray(a, np.float64)
  p = jax.tree.map(f64, term_vars["params"]["mtkd_rl"])
  st = jax.tree.map(f64, term_vars["batch_stats"]["mtkd_rl"])
  s_map, y, cfg = f64(w["student"][1][1]), np.asarray(w["labels"]), w["c"].loss.mtkd_rl
  T, fw = cfg.temperature, cfg.feat_weight
  kls, mses, state = [], [], []
  for k, t in enumerate(w["teach"]):
    e_t, z_t, f_t = f64(t.embedding), f64(t.logits), f64(t.stages[distill.LAST])
    if k == 0:                          # a: pooled pairs to its half length; WRN head features
      x = s_map.reshape(B, f_t.shape[1], 2, -1).mean(2)
      hv = st["head"]["0"]
      bn, s = hv["params"]["batch_norm"], hv["batch_stats"]["batch_norm"]
      f_t = np.maximum((f_t - s["mean"]) / np.sqrt(s["var"] + EPS) * bn["scale"] + bn["bias"], 0)
    else:
      x = s_map
    f = _embed(x, p[str(k)])
    mses.append(((f - f_t) ** 2).reshape(B, -1).mean(1) if k < 2 else np.zeros(B))
    pooled = f.reshape(B, -1, f.shape[-1]).mean(1)
    cos = (pooled * e_t).sum(1) / (np.linalg.norm(pooled, axis=1) * np.linalg.norm(e_t, axis=1))
    kl = _kl(f64(z_s), z_t, T)
    kls.append(kl)
    state.append(np.concatenate([cos[:, None], kl[:, None], _ce(z_t, y)[:, None], e_t, z_t], 1))
  state, kl, mse = np.concatenate(state, 1), np.stack(kls, 1), np.stack(mses, 1)
  a, v = _weights(st["agent"], state, w["sizes"])
  if epoch == 0:
    a, v = np.ones_like(a), np.ones_like(v)
  value = np.sum(np.mean(a * kl, 0)) + fw * np.sum(np.mean(v * mse, 0))
  r = -(_ce(f64(z_s), y) + (a * kl).sum(1) + fw * (v * mse).sum(1))
  r = np.clip((r - r.mean()) / r.std(ddof=1), 0, 1)
  return value, state, r


# ----------------------------------------------------------------------------- fixture

def _config(teachers=("a", "b", "c"), **over):
  loss = distill.loss_defaults(("ce", "mtkd_rl"))
  loss.mtkd_rl.update({"hidden": HIDDEN, **over})
  return mc.ConfigDict({
      "train": {"epochs": 3}, "distill": {"teachers": tuple(teachers)},
      "teachers": {t: {"weight": 1.0, "model": MODELS[t]} for t in teachers}, "loss": loss})


def _world(steps_per_epoch=5, **over):
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  c = _config(**over)
  student = (n(B, C), (n(B, 8, 4), n(B, 4, 8), n(B, 8)))
  teach = [Outputs(n(B, C) * 2, {distill.LAST: n(B, 2, 12)}, n(B, 12)),
           Outputs(n(B, C) * 2, {distill.LAST: n(B, 4, 6)}, n(B, 6)),
           Outputs(n(B, C) * 2, {distill.LAST: n(B, 3, 3, 5)}, n(B, 5))]
  tv = [{"params": {"batch_norm": {"scale": 1 + 0.3 * n(12), "bias": 0.2 * n(12)},
                    "fc": {"kernel": n(12, C), "bias": n(C)}},
         "batch_stats": {"batch_norm": {"mean": 0.3 * n(12), "var": 0.5 + jnp.abs(n(12))}}},
        {"params": {"fc": {"kernel": n(6, C), "bias": n(C)}}, "batch_stats": {}}, None]
  labels = jnp.asarray(r.integers(0, C, B), jnp.int32)
  info = Info(teacher_models=tuple(c.teachers[t].model for t in c.distill.teachers),
              teachers=tuple(teach), teacher_variables=tv, batch_size=B,
              batches_per_epoch=steps_per_epoch)
  term_vars = distill.init(c.loss, jax.random.PRNGKey(0), Outputs.of(*student), teach, info)
  obj = jax.jit(distill.make_objective(c))

  def run(term_vars, z_s, step, epoch=1):
    ctx = Context(epoch=jnp.int32(epoch), teachers=teach, distill=term_vars, step=jnp.int32(step))
    return obj(z_s, student[1], labels, per_run_hp(c), ctx)

  return dict(c=c, student=student, teach=teach, labels=labels, term_vars=term_vars, run=run, r=r,
              sizes=(12 + C + 3, 6 + C + 3, 5 + C + 3))


def _agent(term_vars):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), term_vars["batch_stats"]["mtkd_rl"]["agent"])


def _with(term_vars, stats):
  return {"params": term_vars["params"], "batch_stats": {**term_vars["batch_stats"], "mtkd_rl": stats}}


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("dynamic", [False, True])
def test_agent_weights_match_numpy(dynamic):
  r = np.random.default_rng(1)
  sizes = (7, 5, 6)
  agent = mtkd_rl.agent_init(jax.random.PRNGKey(2), sizes, HIDDEN, dynamic)
  if dynamic:
    agent |= {"logit_factor": jnp.asarray([0.3, 1.0, -0.5]),
              "feature_factor": jnp.asarray([1.2, -0.1, 0.4])}
  states = jnp.asarray(r.normal(size=(B, sum(sizes))), jnp.float32)
  a, v = mtkd_rl.agent_weights(agent, states, sizes)
  wa, wv = _weights(jax.tree.map(np.asarray, agent), np.asarray(states, np.float64), sizes)
  np.testing.assert_allclose(a, wa, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(v, wv, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(a).sum(1), 1.0, rtol=1e-5)     # each part sums to 1


def test_agent_init_is_pytorchs_default_linear():
  agent = mtkd_rl.agent_init(jax.random.PRNGKey(0), (40, 24), 128)
  assert agent["stem"].shape == (64, 128) and "stem_bias" not in agent
  assert float(jnp.abs(agent["stem"]).max()) <= 1 / 8 and float(jnp.abs(agent["stem"]).max()) > 0.1
  bound = 1 / np.sqrt(128)
  for key in ("logit_kernel", "logit_bias", "feature_kernel", "feature_bias"):
    assert float(jnp.abs(agent[key]).max()) <= bound


@pytest.mark.parametrize("epoch", [0, 1])
def test_value_and_stored_reward_match_numpy(epoch):
  w = _world()
  z_s = w["student"][0]
  total, terms, stats = w["run"](w["term_vars"], z_s, 1, epoch)
  value, state, reward = _reference(w, w["term_vars"], z_s, epoch)
  np.testing.assert_allclose(float(terms["mtkd_rl"]), value, rtol=1e-4)
  s = stats["mtkd_rl"]
  assert int(s["count"]) == 1
  np.testing.assert_allclose(s["states"][0], state, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(s["rewards"][0], reward, rtol=1e-4, atol=1e-5)
  assert 0 < np.sum(reward > 0) < B
  assert s["states"].shape == (5, B, sum(w["sizes"]))     # min(agent_step + 1, steps per epoch)


def test_agent_trains_after_every_agent_step_batches_and_at_the_next_epoch():
  w = _world(steps_per_epoch=5, agent_step=2, agent_lr=0.5)
  term_vars, agent = w["term_vars"], _agent(w["term_vars"])
  assert term_vars["batch_stats"]["mtkd_rl"]["states"].shape[0] == 3
  stored = []
  for step in range(5):                       # epoch 1: after steps 2 and 4 (3, then 2 batches)
    z_s = w["student"][0] + jnp.asarray(w["r"].normal(size=(B, C)), jnp.float32)
    _, state, reward = _reference(w, term_vars, z_s, 1)
    _, _, stats = w["run"](term_vars, z_s, step)
    term_vars = _with(term_vars, stats["mtkd_rl"])
    stored.append((state, reward))
    if step in (2, 4):
      for s, r in stored:
        agent = _sgd(agent, s, r, w["sizes"], 0.5)
      stored = []
      assert int(stats["mtkd_rl"]["count"]) == 0
    else:
      assert int(stats["mtkd_rl"]["count"]) == len(stored)
    for name, p in _agent(term_vars).items():
      np.testing.assert_allclose(p, agent[name], rtol=2e-4, atol=2e-6, err_msg=f"step {step}")
  moved = _agent(term_vars)
  assert any(not np.allclose(moved[k], _agent(w["term_vars"])[k]) for k in moved)
  # what is left of an epoch trains the agent at the next epoch's first step, before its batch
  for step in range(2):
    z_s = w["student"][0] * (step + 2)
    _, state, reward = _reference(w, term_vars, z_s, 1)
    stored.append((state, reward))
    term_vars = _with(term_vars, w["run"](term_vars, z_s, step + 5 if step else 5)[2]["mtkd_rl"])
  _, _, stats = w["run"](term_vars, w["student"][0], 0, 2)
  for s, r in stored:
    agent = _sgd(agent, s, r, w["sizes"], 0.5)
  got = jax.tree.map(np.asarray, stats["mtkd_rl"]["agent"])
  for name, p in got.items():
    np.testing.assert_allclose(p, agent[name], rtol=2e-4, atol=2e-6)
  assert int(stats["mtkd_rl"]["count"]) == 1


def test_the_student_objective_trains_the_embeds_of_teachers_with_a_feature_term():
  w = _world()
  c = w["c"]
  obj = distill.make_objective(c)

  def f(params):
    term_vars = {"params": params, "batch_stats": w["term_vars"]["batch_stats"]}
    ctx = Context(epoch=jnp.int32(1), teachers=w["teach"], distill=term_vars, step=jnp.int32(1))
    return obj(*w["student"], w["labels"], per_run_hp(c), ctx)[0]

  g = jax.grad(f)(w["term_vars"]["params"])["mtkd_rl"]
  for k in ("0", "1"):
    assert float(jnp.abs(g[k]["conv1"]["kernel"]).sum()) > 0
  # the 2-D teacher's embed only feeds the agent's (constant) state: no gradient
  assert float(jnp.abs(g["2"]["conv1"]["kernel"]).sum()) == 0
  assert "agent" not in w["term_vars"]["params"]["mtkd_rl"]              # the agent has its own SGD


def test_agent_lr_changes_the_agents_step():
  w = _world(agent_step=1)
  c = w["c"]
  ctx = Context(epoch=jnp.int32(1), teachers=w["teach"], distill=w["term_vars"], step=jnp.int32(1))
  obj = jax.jit(distill.make_objective(c))
  a1 = obj(*w["student"], w["labels"], per_run_hp(c), ctx)[2]["mtkd_rl"]["agent"]["stem"]
  a2 = obj(*w["student"], w["labels"], per_run_hp(c, **{"loss.mtkd_rl.agent_lr": 0.3}), ctx)[2]
  assert not np.allclose(a1, a2["mtkd_rl"]["agent"]["stem"])
  assert "loss.mtkd_rl.agent_lr" in distill.per_run_keys(c.loss, ("a", "b", "c"))
  assert "teachers.a.weight" not in distill.per_run_keys(c.loss, ("a", "b", "c"))


@pytest.mark.parametrize("over,teachers,match", [
    ({"agent_step": 0}, ("a", "b"), r"loss.mtkd_rl.agent_step=0 must be a positive integer"),
    ({"hidden": 0}, ("a", "b"), r"loss.mtkd_rl.hidden=0 must be a positive integer"),
    ({}, ("a",), r"needs at least two; the stage has 1"),
])
def test_bad_settings_are_named(over, teachers, match):
  c = _config(teachers, **over)
  with pytest.raises(distill.TermError, match=match):
    distill.check(c.loss, [(t, mc.ConfigDict(MODELS[t])) for t in teachers],
                  mc.ConfigDict({"name": "wrn10_1", "ndim": 1}), 3)


def test_without_the_step_index_the_term_says_so():
  w = _world()
  ctx = Context(epoch=jnp.int32(1), teachers=w["teach"], distill=w["term_vars"])
  with pytest.raises(distill.TermError, match="step's index"):
    distill.make_objective(w["c"])(*w["student"], w["labels"], per_run_hp(w["c"]), ctx)


# ----------------------------------------------------------------------------- the engine

class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(layers.Conv(4, 3)(x))
    h2 = nn.relu(layers.Conv(8, 3, strides=2)(h))
    emb = layers.global_avg_pool(h2)
    return layers.Linear(C)(emb), (h, h2, emb)


def test_engine_epoch_trains_the_embeds_and_the_agent():
  L, CH, NW, BS = 16, 2, 40, 8
  c = config_lib.base()
  c.train.update(batch_size=BS, epochs=2)
  c.optim.update(schedule="constant", lr=0.05)
  c.loss = distill.loss_defaults(("ce", "mtkd_rl"))
  c.loss.mtkd_rl.update(agent_step=1, hidden=HIDDEN)
  c.distill = mc.ConfigDict({"teachers": ("a", "b")})
  c.teachers = mc.ConfigDict({t: teachers_lib.spec({"name": "wrn10_1", "ndim": 1})
                              for t in ("a", "b")})
  r = np.random.default_rng(1)
  x = jnp.asarray(r.normal(size=(NW, L, CH)), jnp.float32)
  y = jnp.asarray(r.integers(0, C, NW), jnp.int32)
  ts = [teachers_lib.Teacher(t, TinyWRN(C), c.teachers[t]) for t in ("a", "b")]
  tvars = [jax.tree.map(lambda a: np.asarray(a)[None],
                        t.model.init(jax.random.PRNGKey(10 + i), x[:2], train=False))
           for i, t in enumerate(ts)]
  run = runs_lib.Run(0, 0, 1, {})
  inputs = train_lib.Runs(key=state_lib.init_keys(np.array([1])),
                          train=jnp.asarray(np.arange(24), jnp.int32)[None],
                          train_count=jnp.asarray([24], jnp.int32), mean=jnp.zeros((1, CH)),
                          std=jnp.ones((1, CH)),
                          hp=jax.tree.map(jnp.asarray, runs_lib.hparams(c, [run])))
  model = Tiny()
  term_init, info = setup_lib._term_init(c, model, ts, (L, CH), num_windows=NW, train_windows=24,
                                     batch_size=BS, batches_per_epoch=3)
  state = train_lib.init_state(model, c, inputs.key, jnp.zeros((1, L, CH)), inputs.hp, None,
                               term_init, tvars)
  init = jax.tree.map(np.asarray, state)
  assert init.batch_stats["distill"]["mtkd_rl"]["states"].shape == (1, 2, BS, 2 * (5 + C + 3))
  teacher_outputs = teachers_lib.make_teacher_outputs(ts, [False, False], distill.teacher_needs(c.loss))
  step = train_lib.Step(model, c, distill.make_objective(c), C, teacher_outputs)
  epoch = train_lib.make_train_epoch(step, 3)
  state, terms = epoch(jax.tree.map(jnp.asarray, state), train_lib.Data(x, y),
                       inputs.replace(teachers=tvars), 1)
  state = jax.tree.map(np.asarray, state)
  assert np.all(np.isfinite(terms["loss"])) and float(terms["steps"][0]) == 3
  term_vars, term_vars0 = state.batch_stats["distill"]["mtkd_rl"], init.batch_stats["distill"]["mtkd_rl"]
  assert int(term_vars["count"][0]) == 0                  # after steps 1 (two batches) and 2 (one)
  assert not np.allclose(term_vars["agent"]["stem"], term_vars0["agent"]["stem"])
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.params["distill"]["mtkd_rl"]),
      jax.tree.leaves(init.params["distill"]["mtkd_rl"])))
  assert info.batch_size == BS and info.batches_per_epoch == 3


def test_normalized_reward_is_finite_when_a_batch_has_equal_rewards():
  """The authors' z-score divides by the batch's std: 0/0 = NaN when every reward is equal (or
  the batch has one sample). Those rewards are 0 here; a normal batch's are unchanged."""
  for r in (jnp.full((5,), -1.3, jnp.float32), jnp.float32([-2.0])):
    got = np.asarray(mtkd_rl.normalized_reward(r))
    assert np.all(np.isfinite(got)) and not np.any(got)
  r = np.random.default_rng(5).normal(size=7)
  np.testing.assert_allclose(np.asarray(mtkd_rl.normalized_reward(jnp.float32(r))),
                             np.clip((r - r.mean()) / r.std(ddof=1), 0, 1), rtol=1e-5, atol=1e-6)
