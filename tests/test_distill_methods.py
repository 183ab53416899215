"""CRD, SimKD, SRRL and CA-MKD's intermediate term (`jkd.distill`): each value against numpy on
small random inputs, CRD's memory banks and frozen Z over two steps and its negatives, the per-run
keys, the named bad settings; and through the engine: the parts train in the state, a SimKD
student is evaluated through its projector and the teacher's classifier, and `restore_run` leaves
the parts out unless asked."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd import checkpoint, distill
from jkd import config as config_lib
from jkd import runs as runs_lib
from jkd import setup as setup_lib
from jkd import state as state_lib
from jkd import teachers as teachers_lib
from jkd import train as train_lib
from jkd.distill import Info, Outputs, crd
from jkd.models import layers

from distill_setup import TinyWRN, kd_config, per_run_hp

B, K, N = 6, 3, 30
TERMS = ("crd", "simkd", "srrl", "camkd")
EPS = 1e-5


# ----------------------------------------------------------------------------- numpy references

def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _bn_train(x, p):
  m, v = x.mean((0, 1)), x.var((0, 1))
  return (x - m) / np.sqrt(v + EPS) * p["scale"] + p["bias"]


def _bn_eval(x, p, s):
  return (x - s["mean"]) / np.sqrt(s["var"] + EPS) * p["scale"] + p["bias"]


def _conv(x, p, pad=0):                      # 1-D, stride 1, kernel (w, in, out)
  k = p["kernel"]
  xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  length = xp.shape[1] - k.shape[0] + 1
  y = sum(xp[:, j:j + length] @ k[j] for j in range(k.shape[0]))
  return y + p["bias"] if "bias" in p else y


def _pool(x, out):                           # adaptive average pooling, out divides the length
  return x.reshape(x.shape[0], out, -1, x.shape[-1]).mean(2)


def _relu(x):
  return np.maximum(x, 0.0)


def _head_features(hv, f):                   # WRN: relu(batch_norm(map)); others: the map
  if "batch_norm" not in hv["params"]:
    return f
  return _relu(_bn_eval(f, hv["params"]["batch_norm"], hv["batch_stats"]["batch_norm"]))


def _head_logits(hv, f):
  fc = hv["params"]["fc"]
  return f.mean(1) @ fc["kernel"] + fc["bias"]


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _projector(x, p, s=None):                # SimKD projector, train (s None) or eval mode
  bn = (lambda h, n: _bn_train(h, p[n])) if s is None else (lambda h, n: _bn_eval(h, p[n], s[n]))
  h = _relu(bn(_conv(x, p["conv1"]), "bn1"))
  h = _relu(bn(_conv(h, p["conv2"], 1), "bn2"))
  return _relu(bn(_conv(h, p["conv3"]), "bn3"))


def _embed(x, p):
  h = x @ p["linear"]["kernel"] + p["linear"]["bias"]
  return h / np.linalg.norm(h, axis=1, keepdims=True)


def _nce(x, n):
  noise = (x.shape[1] - 1) / n
  d1 = np.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
  d0 = np.log(noise / (x[:, 1:] + noise + 1e-7))
  return -np.mean(d1 + d0.sum(1))


def _crd(p, s, e_s_in, e_t_in, contrast, n, temp, z=None):
  """One teacher's CRD value, its Zs and its updated banks (momentum 0.5)."""
  e_s, e_t = _embed(e_s_in, p["embed_s"]), _embed(e_t_in, p["embed_t"])
  out_s = np.exp(np.einsum("bkd,bd->bk", s["memory_t"][contrast], e_s) / temp)
  out_t = np.exp(np.einsum("bkd,bd->bk", s["memory_s"][contrast], e_t) / temp)
  z_s, z_t = z if z is not None else (out_s.mean() * n, out_t.mean() * n)
  value = _nce(out_s / z_s, n) + _nce(out_t / z_t, n)
  idx = contrast[:, 0]
  mem = {}
  for name, e in (("memory_s", e_s), ("memory_t", e_t)):
    m = s[name].copy()
    pos = 0.5 * m[idx] + 0.5 * e
    m[idx] = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    mem[name] = m
  return value, (z_s, z_t), mem


# ----------------------------------------------------------------------------- the objective

def _loss_config(terms=TERMS, teachers=("a", "b")):
  return kd_config(terms, teachers, crd={"nce_k": 5, "feat_dim": 4})


@pytest.fixture(scope="module")
def world():
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  c = _loss_config()
  # student: stages (B, 8, 4), (B, 4, 8) and the embedding; teacher a: a WRN (head batch_norm,
  # fc) with a last map of half the student's length; teacher b: a ResNet (fc) of the same length
  student = (n(B, K), (n(B, 8, 4), n(B, 4, 8), n(B, 8)))
  teach = [Outputs(n(B, K) * 2, {distill.LAST: n(B, 2, 12)}, n(B, 12)),
           Outputs(n(B, K) * 2, {distill.LAST: n(B, 4, 6)}, n(B, 6))]
  tv = [{"params": {"batch_norm": {"scale": 1 + 0.3 * n(12), "bias": 0.2 * n(12)},
                    "fc": {"kernel": n(12, K), "bias": n(K)}, "conv1": {"kernel": n(3, 3, 4)}},
         "batch_stats": {"batch_norm": {"mean": 0.3 * n(12), "var": 0.5 + jnp.abs(n(12))}}},
        {"params": {"fc": {"kernel": n(6, K), "bias": n(K)}}, "batch_stats": {}}]
  labels = jnp.asarray(r.integers(0, K, N), jnp.int32)
  pool = jnp.asarray(np.r_[r.permutation(N)[:20], np.zeros(4, int)], jnp.int32)  # 20 real
  info = Info(num_windows=N, train_windows=20, teacher_models=tuple(
      c.teachers[t].model for t in c.distill.teachers), teachers=tuple(teach), teacher_variables=tv)
  own = jax.jit(lambda key, tv: distill.init(c.loss, key, Outputs.of(*student), teach,
                                             dataclasses.replace(info, teacher_variables=tv)))(
      jax.random.PRNGKey(0), tv)
  obj = jax.jit(distill.make_objective(c))

  def run(own, index, epoch=1, hp=None, key=3):
    ctx = {"epoch": jnp.int32(epoch), "teachers": teach, "distill": own, "index": index,
           "key": jax.random.PRNGKey(key), "pool": pool, "pool_count": jnp.int32(20),
           "all_labels": labels}
    return obj(*student, labels[index], per_run_hp(c) if hp is None else hp, ctx)

  return dict(c=c, student=student, teach=teach, tv=tv, labels=labels, pool=pool, info=info,
              own=own, run=run)


def _contrast(w, index, key=3):
  neg = crd.negatives(jax.random.PRNGKey(key), w["labels"][index], w["pool"], jnp.int32(20),
                      w["labels"], 5)
  return np.concatenate([np.asarray(index)[:, None], np.asarray(neg)], 1)


def test_each_term_matches_numpy(world):
  w = world
  index = w["pool"][:B]
  total, terms, _ = w["run"](w["own"], index)
  p, s = _np(w["own"]["params"]), _np(w["own"]["batch_stats"])
  _, (f1, f2, emb) = _np(w["student"])
  teach, tv = _np(w["teach"]), _np(w["tv"])
  y = np.asarray(w["labels"])[np.asarray(index)]
  wt = (1.0, 2.0)                                        # teachers.a.weight, teachers.b.weight
  # CRD: Σ_k w_k (NCE(student vs teacher bank) + NCE(teacher vs student bank)), n = 20
  contrast = _contrast(w, index)
  want = sum(wt[k] * _crd(p["crd"][str(k)], s["crd"][str(k)], emb, teach[k].embedding, contrast,
                          20, 0.07)[0] for k in range(2))
  np.testing.assert_allclose(float(terms["crd"]), want, rtol=1e-4)
  # SimKD (teacher 0): the student map pooled to the teacher's length, projected, vs the map the
  # teacher's classifier pools
  target = _head_features(tv[0], teach[0].stages[0])
  proj = _projector(_pool(f2, 2), p["simkd"]["projector"])
  np.testing.assert_allclose(float(terms["simkd"]), np.mean((proj - target) ** 2), rtol=1e-4)
  # SRRL: Σ_k w_k (statm + MSE(teacher fc on the connected map, teacher logits))
  want = 0.0
  for k in range(2):
    q = p["srrl"][str(k)]
    conn = _relu(_bn_train(_conv(f2, q["conv"]), q["bn"]))
    f_t = _head_features(tv[k], teach[k].stages[0])
    statm = np.mean((conn.mean(1) - f_t.mean(1)) ** 2)
    l_sr = np.mean((_head_logits(tv[k], conn) - teach[k].logits) ** 2)
    want += wt[k] * (statm + l_sr)
  np.testing.assert_allclose(float(terms["srrl"]), want, rtol=1e-4)
  # CA-MKD: weights (1 − softmax_k CE(teacher head on F_k)) / (K − 1), Σ_kb w mse / (B K)
  # chained, as the authors' CalWeight: teacher b's alignment (the student map is as long as
  # its, so adaptive pooling) starts from teacher a's pooled map: each cell repeated twice
  mse, ce, x = [], [], f2
  for k, length in ((0, 2), (1, 4)):
    q = p["camkd"][str(k)]
    x = _pool(x, length) if x.shape[1] >= length else np.repeat(x, length // x.shape[1], 1)
    f = _relu(_bn_train(_conv(x, q["conv1"]), q["bn1"]))
    f_t = _head_features(tv[k], teach[k].stages[0])
    mse.append(((f - f_t) ** 2).reshape(B, -1).mean(1))
    ce.append(-_log_softmax(_head_logits(tv[k], f))[np.arange(B), y])
  ce = np.stack(ce)
  weights = (1 - np.exp(ce) / np.exp(ce).sum(0)) / 1
  want = np.sum(weights * np.stack(mse)) / (B * 2)
  np.testing.assert_allclose(float(terms["camkd"]), want, rtol=1e-4)
  want_total = 0.8 * float(terms["crd"]) + terms["simkd"] + terms["srrl"] + 50 * terms["camkd"]
  np.testing.assert_allclose(float(total), float(want_total), rtol=1e-5)
  # CA-MKD is dropped in the first epoch (start_epoch=1)
  _, terms0, _ = w["run"](w["own"], index, epoch=0)
  assert float(terms0["camkd"]) == 0.0 and float(terms0["srrl"]) == float(terms["srrl"])


def test_crd_banks_move_after_scoring_and_z_freezes(world):
  w = world
  i1, i2 = w["pool"][:B], w["pool"][B:2 * B]
  _, terms1, stats1 = w["run"](w["own"], i1)
  p, s0 = _np(w["own"]["params"]["crd"]), _np(w["own"]["batch_stats"]["crd"])
  _, (_, _, emb) = _np(w["student"])
  teach = _np(w["teach"])
  for k in range(2):
    _, (z_s, z_t), mem = _crd(p[str(k)], s0[str(k)], emb, teach[k].embedding, _contrast(w, i1),
                              20, 0.07)
    got = _np(stats1["crd"][str(k)])
    np.testing.assert_allclose([got["z_s"], got["z_t"]], [z_s, z_t], rtol=1e-4)
    for name in ("memory_s", "memory_t"):
      np.testing.assert_allclose(got[name], mem[name], rtol=1e-4, atol=1e-6)
      untouched = np.setdiff1d(np.arange(N), np.asarray(i1))
      np.testing.assert_array_equal(got[name][untouched], s0[str(k)][name][untouched])
  # the next step scores against the moved banks with the frozen Z, and keeps Z
  own2 = {"params": w["own"]["params"], "batch_stats": {**w["own"]["batch_stats"], **stats1}}
  _, terms2, stats2 = w["run"](own2, i2, key=4)
  s1 = _np(stats1["crd"])
  want = 0.0
  for k, wt in ((0, 1.0), (1, 2.0)):
    z = (s1[str(k)]["z_s"], s1[str(k)]["z_t"])
    want += wt * _crd(p[str(k)], s1[str(k)], emb, teach[k].embedding, _contrast(w, i2, key=4),
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


def test_every_per_run_key_changes_the_value(world):
  w = world
  index = w["pool"][:B]
  base = per_run_hp(w["c"])
  ref = float(w["run"](w["own"], index, hp=base)[0])
  keys = distill.per_run_keys(w["c"].loss, ("a", "b"))
  assert {"loss.crd.weight", "loss.crd.temperature", "loss.simkd.weight", "loss.srrl.weight",
          "loss.camkd.weight", "teachers.a.weight", "teachers.b.weight"} == set(keys)
  for key in keys:
    hp = dict(base, **{key: base[key] * 0.5 + 0.05})
    assert float(w["run"](w["own"], index, hp=hp)[0]) != ref, f"sweeping {key} changes nothing"


def test_simkd_predict_is_the_teacher_classifier_on_the_projection(world):
  w = world
  logits = distill.make_predict(w["c"], w["info"])(w["own"], *w["student"])
  p, s = _np(w["own"]["params"]["simkd"]), _np(w["own"]["batch_stats"]["simkd"])
  _, (_, f2, _) = _np(w["student"])
  want = _head_logits(_np(w["tv"][0]), _projector(_pool(f2, 2), p["projector"], s["projector"]))
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-5)
  assert distill.make_predict(_loss_config(("crd", "srrl")), w["info"]) is None


PAIRS = [("a", mc.ConfigDict({"ndim": 1})), ("b", mc.ConfigDict({"ndim": 1}))]
IMAGE = [("a", mc.ConfigDict({"ndim": 1})), ("img", mc.ConfigDict({"ndim": 2}))]


@pytest.mark.parametrize("terms,section,pairs,match", [
    (("crd",), {"crd": {"nce_k": 0}}, PAIRS, "loss.crd.nce_k"),
    (("crd",), {"crd": {"feat_dim": 0}}, PAIRS, "loss.crd.feat_dim"),
    (("crd",), {"crd": {"momentum": 1.0}}, PAIRS, "loss.crd.momentum"),
    (("simkd",), {"simkd": {"teacher": 2}}, PAIRS, "loss.simkd.teacher"),
    (("simkd",), {"simkd": {"factor": 0}}, PAIRS, "loss.simkd.factor"),
    (("simkd",), {"simkd": {"teacher": 1}}, IMAGE, "loss.simkd.teacher: teacher 'img' is 2-D"),
    (("camkd",), {}, PAIRS[:1], "loss.camkd weighs teachers"),
    (("camkd",), {}, IMAGE, "loss.camkd: teacher 'img' is 2-D"),
    (("camkd",), {"camkd": {"start_epoch": -1}}, PAIRS, "loss.camkd.start_epoch"),
])
def test_bad_settings_are_named(terms, section, pairs, match):
  loss = distill.loss_defaults(terms)
  for name, values in section.items():
    loss[name].update(values)
  with pytest.raises(distill.TermError, match=match):
    distill.check(loss, pairs, mc.ConfigDict({"ndim": 1}), 10)
  distill.check(distill.loss_defaults(terms), PAIRS, mc.ConfigDict({"ndim": 1}), 10)
  distill.check(distill.loss_defaults(("srrl",)), IMAGE, mc.ConfigDict({"ndim": 1}), 10)


def test_crd_nce_k_must_fit_the_training_windows(world):
  w = world
  loss = distill.loss_defaults(("crd",))
  loss.crd.nce_k = 21
  with pytest.raises(distill.TermError, match="loss.crd.nce_k=21 exceeds the 20 training"):
    distill.init(loss, jax.random.PRNGKey(0), Outputs.of(*w["student"]), w["teach"], w["info"])


# ----------------------------------------------------------------------------- through the engine

L, C, NW, BS = 8, 3, 40, 8
ENGINE_TERMS = ("crd", "simkd", "srrl")     # CA-MKD's parts ride the same plumbing as SRRL's


class Tiny(nn.Module):
  """A student with two stage maps (B, 8, 4), (B, 8, 6) and its pooled embedding."""

  @nn.compact
  def __call__(self, x, train=False):
    h1 = nn.relu(layers.BatchNorm()(layers.Conv(4, 3, padding=1)(x), train))
    h2 = nn.relu(layers.BatchNorm()(layers.Conv(6, 3, padding=1)(h1), train))
    emb = layers.global_avg_pool(h2)
    return layers.Linear(K, name="fc")(emb), (h1, h2, emb)


def test_engine_trains_the_parts_and_simkd_predicts_through_them(tmp_path):
  c = config_lib.base()
  c.train.update(batch_size=BS, epochs=2)
  c.optim.update(schedule="constant", lr=0.05)
  c.loss = distill.loss_defaults(("ce",) + ENGINE_TERMS)
  c.loss.crd.update(nce_k=4, feat_dim=4)
  c.distill = mc.ConfigDict({"teachers": ("a",)})
  c.teachers = mc.ConfigDict({"a": teachers_lib.spec({"name": "wrn10_1", "ndim": 1})})
  r = np.random.default_rng(1)
  x = jnp.asarray(r.normal(size=(NW, L, C)), jnp.float32)
  y = jnp.asarray(r.integers(0, K, NW), jnp.int32)
  ts = [teachers_lib.Teacher("a", TinyWRN(K), c.teachers.a)]
  tvars = []
  for i, t in enumerate(ts):
    v = t.model.init(jax.random.PRNGKey(10 + i), x[:2], train=False)
    v["batch_stats"] = jax.tree.map(lambda a: a + 0.2, v["batch_stats"])
    tvars.append(jax.tree.map(lambda a: np.asarray(a)[None], v))       # one run
  train_idx = np.r_[np.arange(24), np.zeros(4, int)].astype(np.int32)
  run = runs_lib.Run(0, 0, 1, {})
  inputs = train_lib.Runs(key=state_lib.init_keys(np.array([1])), train=jnp.asarray(train_idx)[None],
                          train_count=jnp.asarray([24], jnp.int32), mean=jnp.zeros((1, C)),
                          std=jnp.ones((1, C)), hp=jax.tree.map(jnp.asarray,
                                                                runs_lib.hparams(c, [run])))
  model = Tiny()
  extra, info = setup_lib._term_init(c, model, ts, (L, C), num_windows=NW, train_windows=24)
  state = train_lib.init_state(model, c, inputs.key, jnp.zeros((1, L, C)), inputs.hp, None, extra,
                               tvars)
  init = jax.tree.map(np.asarray, state)
  assert set(init.params["distill"]) == set(ENGINE_TERMS) and "distill" in init.batch_stats
  np.testing.assert_array_equal(init.batch_stats["distill"]["simkd"]["head"]["params"]["fc"]["kernel"],
                                tvars[0]["params"]["fc"]["kernel"])
  guide = teachers_lib.make_guide(ts, [False], distill.teacher_needs(c.loss))
  epoch = train_lib.make_train_epoch(model, c, distill.make_objective(c), 3, K, guide)
  state, terms = epoch(jax.tree.map(jnp.asarray, state), x, y, inputs, jnp.int32(1), tvars)
  state = jax.tree.map(np.asarray, state)
  assert np.all(np.isfinite(terms["loss"])) and float(terms["steps"][0]) == 3
  assert not state.failed[0]
  for name in ENGINE_TERMS:                                # every term's parts trained
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(state.params["distill"][name]), jax.tree.leaves(init.params["distill"][name])))
  bank = state.batch_stats["distill"]["crd"]["0"]["memory_s"][0]
  old = init.batch_stats["distill"]["crd"]["0"]["memory_s"][0]
  assert not np.allclose(bank[:24], old[:24]) and np.array_equal(bank[24:], old[24:])
  assert state.batch_stats["distill"]["crd"]["0"]["z_s"][0] > 0
  np.testing.assert_array_equal(state.batch_stats["distill"]["simkd"]["head"]["params"]["fc"]["kernel"],
                                tvars[0]["params"]["fc"]["kernel"])           # frozen copy
  # evaluation predicts through the projector and teacher a's classifier
  evaluate = train_lib.make_evaluate(model, c, K, predict=distill.make_predict(c, info))
  idx = jnp.asarray(np.arange(24, 40).reshape(1, 2, 8))
  mask = jnp.ones((1, 2, 8))
  conf, loss = evaluate(state.variables, x, y, idx, mask, inputs.mean, inputs.std)
  one = jax.tree.map(lambda a: a[0], state.variables)
  _, (_, h2, _) = model.apply(checkpoint.student_variables(one), x[24:], train=False)
  own = _np({k: v["distill"]["simkd"] for k, v in one.items()})
  proj = _projector(_pool(np.asarray(h2, np.float64), 2), own["params"]["projector"],
                    own["batch_stats"]["projector"])
  logits = _head_logits(own["batch_stats"]["head"], proj)
  yy = np.asarray(y)[24:]
  want = np.zeros((K, K))
  np.add.at(want, (yy, logits.argmax(-1)), 1)
  np.testing.assert_array_equal(np.asarray(conf)[0], want)
  np.testing.assert_allclose(float(loss[0]), -_log_softmax(logits)[np.arange(16), yy].mean(),
                             rtol=1e-4)
  _, plain = train_lib.make_evaluate(model, c, K)(state.variables, x, y, idx, mask, inputs.mean,
                                                  inputs.std)
  assert float(plain[0]) != float(loss[0])                # not the student's own fc
  # the checkpoint holds the parts; restore_run leaves them out unless asked
  mngr = checkpoint.manager(str(tmp_path), async_writes=False)
  checkpoint.save(mngr, 1, state, {})
  mngr.wait_until_finished()
  (tmp_path / "runs.json").write_text(json.dumps([{"run": 0, "fold": 0, "seed": 1, "sweep": {}}]))
  alone = checkpoint.restore_run(str(tmp_path), 0)
  assert "distill" not in alone["params"] and "distill" not in alone["batch_stats"]
  full = checkpoint.restore_run(str(tmp_path), (0, 1), distill=True)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(one)):
    np.testing.assert_array_equal(a, b)
  assert set(full["params"]["distill"]) == set(ENGINE_TERMS)
