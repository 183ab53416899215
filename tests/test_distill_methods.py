"""CRD, SimKD, SRRL and CA-MKD together (`jkd.distill`; each term's own numpy checks are in
tests/test_distill_<name>.py): one objective sums them by their weights, their per-run keys, the
named bad settings; and through the engine: the parts train in the state, a SimKD student is
evaluated through its projector and the teacher's classifier, and `restore_run` leaves the parts
out unless asked."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd.engine import checkpoint
from jkd import distill
from jkd import config as config_lib
from jkd.engine import runs as runs_lib
from jkd.engine import setup as setup_lib
from jkd.engine import state as state_lib
from jkd.engine import teachers as teachers_lib
from jkd.engine import train as train_lib
from jkd.models import layers

from distill_setup import (FB as B, TinyWRN, as_np, feature_world, head_logits, log_softmax, pool,
                           simkd_projector)

K = 3


def test_one_objective_sums_the_four_terms_by_their_weights_and_names_their_keys():
  """(Each term's value against numpy: tests/test_distill_<name>.py; that every per-run key
  changes the value: tests/test_distill_registry.py.)"""
  w = feature_world()
  total, terms, _ = w["run"](w["term_vars"], w["pool"][:B])
  want_total = 0.8 * float(terms["crd"]) + terms["simkd"] + terms["srrl"] + 50 * terms["camkd"]
  np.testing.assert_allclose(float(total), float(want_total), rtol=1e-5)
  keys = distill.per_run_keys(w["c"].loss, ("a", "b"))
  assert {"loss.crd.weight", "loss.crd.temperature", "loss.simkd.weight", "loss.srrl.weight",
          "loss.camkd.weight", "teachers.a.weight", "teachers.b.weight"} == set(keys)


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
  term_init, info = setup_lib._term_init(c, model, ts, (L, C), num_windows=NW, train_windows=24)
  state = train_lib.init_state(model, c, inputs.key, jnp.zeros((1, L, C)), inputs.hp, None, term_init,
                               tvars)
  init = jax.tree.map(np.asarray, state)
  assert set(init.params["distill"]) == set(ENGINE_TERMS) and "distill" in init.batch_stats
  np.testing.assert_array_equal(init.batch_stats["distill"]["simkd"]["head"]["params"]["fc"]["kernel"],
                                tvars[0]["params"]["fc"]["kernel"])
  teacher_outputs = teachers_lib.make_teacher_outputs(ts, [False], distill.teacher_needs(c.loss))
  step = train_lib.Step(model, c, distill.make_objective(c), K, teacher_outputs)
  epoch = train_lib.make_train_epoch(step, 3)
  state, terms = epoch(jax.tree.map(jnp.asarray, state), train_lib.Data(x, y),
                       inputs.replace(teachers=tvars), 1)
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
  conf, loss = evaluate(state.variables, train_lib.Data(x, y), inputs, train_lib.Plan(idx, mask))
  one = jax.tree.map(lambda a: a[0], state.variables)
  _, (_, h2, _) = model.apply(checkpoint.student_variables(one), x[24:], train=False)
  term_vars = as_np({k: v["distill"]["simkd"] for k, v in one.items()})
  proj = simkd_projector(pool(np.asarray(h2, np.float64), 2), term_vars["params"]["projector"],
                    term_vars["batch_stats"]["projector"])
  logits = head_logits(term_vars["batch_stats"]["head"], proj)
  yy = np.asarray(y)[24:]
  want = np.zeros((K, K))
  np.add.at(want, (yy, logits.argmax(-1)), 1)
  np.testing.assert_array_equal(np.asarray(conf)[0], want)
  np.testing.assert_allclose(float(loss[0]), -log_softmax(logits)[np.arange(16), yy].mean(),
                             rtol=1e-4)
  _, plain = train_lib.make_evaluate(model, c, K)(state.variables, train_lib.Data(x, y), inputs,
                                                  train_lib.Plan(idx, mask))
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
