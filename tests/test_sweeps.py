"""Sweeps cannot lie: every sweepable key changes what the step computes, and a key the step does
not read per run (or a term that is not listed, or a repeated value) is refused with one line."""

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

import jkd.models
from jkd import config as config_lib
from jkd import distill, pipeline
from jkd.engine import state as state_lib
from jkd.engine import train as train_lib

import jkd.data


def _engine(optim="sgd", schedule="lab", loss="ce"):
  c = config_lib.base(mc.ConfigDict({"name": "windows", "path": ""}))
  c.model.name = "wrn10_1"
  c.train.epochs = 60
  c.optim.update(name=optim, schedule=schedule, step_size=30, milestones=(30,))
  c.loss.terms = (loss,)
  return c


def _stepper(c):
  """Two train steps of a tiny model as ONE compiled function of (hp, epoch): what a sweep point
  changes is only the per-run values, so every key's check reuses the compile."""
  model = jkd.models.create("wrn10_1", num_classes=3, ndim=1)
  r = np.random.default_rng(0)
  x = jnp.asarray(r.normal(size=(8, 16, 3)), jnp.float32)
  y = jnp.asarray(r.integers(0, 3, 8), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), x[:2])
  step = train_lib.Step(model, c, distill.make_objective(c), 3)
  data = train_lib.Data(x, y)

  @jax.jit
  def run(hp, epoch):
    st = state_lib.from_variables(variables, train_lib.make_tx(c, hp))
    run = train_lib.Runs(key=jax.random.PRNGKey(0), train=jnp.arange(8), train_count=jnp.int32(8),
                         mean=jnp.zeros(3), std=jnp.ones(3), hp=hp)
    for k in (1, 2):   # a second step, so momentum and Adam's moments enter the update
      batch = train_lib.StepBatch(jnp.arange(8), jnp.bool_(True), jax.random.PRNGKey(k))
      st, terms = step(st, data, run, batch, train_lib.Clock(epoch, jnp.int32(k - 1)))
    return jax.tree.leaves(st.params) + [terms["loss"]]

  return lambda hp, epoch: run(hp, jnp.int32(epoch))


def _other(value):
  return value * 0.5 + 0.37 if value else 0.3        # no default is its fixed point 0.74


@pytest.mark.parametrize("optim,schedule,loss", [("sgd", "lab", "ce"), ("adam", "step", "focal"),
                                                 ("adamw", "multistep", "ce")])
def test_every_sweepable_engine_key_changes_the_step(optim, schedule, loss):
  c = _engine(optim, schedule, loss)
  c.optim.warmup_epochs = 2.0
  base = {k: jnp.float32(v) for k, v in config_lib.numeric_hparams(c).items()}
  if loss == "ce":
    base["loss.ce.label_smoothing"] = jnp.float32(0.1)
  keys = config_lib.per_run_keys(c)
  assert "optim.lr" in keys and ("optim.momentum" in keys) == (optim == "sgd")
  assert ("optim.gamma" in keys) == (schedule != "lab")
  assert f"loss.{loss}.weight" in keys
  # as a sweep of the only term's weight says (unswept at 1, that term is the loss itself)
  c.sweep = {"loss": {loss: {"weight": (1.0, 0.5)}}}
  step = _stepper(c)
  ref = {e: step(base, e) for e in (0, 35)}
  for key in keys:
    hp = dict(base, **{key: jnp.float32(_other(float(base[key])))})
    changed = any(not np.allclose(a, b, rtol=0, atol=0) for e in ref
                  for a, b in zip(ref[e], step(hp, e)))
    assert changed, f"sweeping {key} would change nothing"


def _stage(**loss):
  c = pipeline.base(jkd.data.default_config("windows"))
  kd = c.stages.student_kd
  pipeline.lab_loss(kd.loss, **loss)
  return c, kd


@pytest.mark.parametrize("sweep,match", [
    # the SP trap of a config built with β = 0: SP is not listed, so no point would train SP
    ({"loss": {"sp": {"weight": (0.0, 200.0)}}}, "'sp' is not in loss.terms"),
    ({"optim": {"backbone_lr_mult": (1.0, 0.5)}}, "not read per run"),
    ({"optim": {"gamma": (0.1, 0.2)}}, "not read per run"),          # the lab schedule has none
    ({"optim": {"b1": (0.9, 0.8)}}, "not read per run"),             # SGD has no b1
    ({"loss": {"annealing": {"tau_max": (4, 10)}}}, "'annealing' is not in loss.terms"),
    ({"loss": {"kd": {"temperature": (4.0, 4.0)}}}, "repeats a value"),
    ({"teachers": {"signal": {"weight": (0.2, 0.8)}}}, "loss.alpha=0.5 sets the two teachers"),
    ({"loss": {"kd": {"reduction": ("mean",)}}}, "not a number"),
])
def test_sweeps_that_would_change_nothing_are_refused(sweep, match, tmp_path):
  c, kd = _stage(lam=0.9, alpha=0.5, beta=0.0)
  kd.sweep = sweep
  cfg = pipeline.stage_config(c, "student_kd", str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.sweep(cfg)


def test_static_keys_of_listed_terms_are_refused(tmp_path):
  c, kd = _stage(lam=0.9, alpha=0.5, beta=200.0)
  kd.loss.terms = ("ce", "kd", "sp", "fitnet")
  kd.sweep = {"loss": {"fitnet": {"hint_layer": (1, 2)}}}
  cfg = pipeline.stage_config(c, "student_kd", str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="loss.fitnet.hint_layer is not read per run"):
    config_lib.sweep(cfg)
  kd.sweep = {"loss": {"sp": {"weight": (0.0, 200.0)}, "alpha": (0.1, 0.9)},
              "optim": {"warmup_epochs": (0.0, 3.0)}}
  cfg = pipeline.stage_config(c, "student_kd", str(tmp_path))
  assert config_lib.sweep(cfg) == {"loss.sp.weight": (0.0, 200.0), "loss.alpha": (0.1, 0.9),
                                   "optim.warmup_epochs": (0.0, 3.0)}


def test_zipped_keys_are_taken_together_and_multiplied_with_the_rest(tmp_path):
  c = pipeline.base(jkd.data.default_config("windows"))
  pipeline.add_teacher(c, "pi", {"name": "wrn16_1", "ndim": 2})
  kd = pipeline.add_kd_stage(c, "three", ("image", "pi", "signal"), ("ce", "kd", "sp"))
  weights = ((.2, .2, .6), (.2, .3, .5), (.3, .2, .5), (.3, .3, .4))   # (GAF, PI, signal)
  kd.sweep = {"zip": {"teachers": {n: {"weight": tuple(w[i] for w in weights)}
                                   for i, n in enumerate(("image", "pi", "signal"))}},
              "loss": {"sp": {"weight": (0.0, 200.0)}}}
  cfg = pipeline.stage_config(c, "three", str(tmp_path))
  points = config_lib.sweep_points(cfg)
  assert len(points) == 8
  got = {(p["teachers.image.weight"], p["teachers.pi.weight"], p["teachers.signal.weight"],
          p["loss.sp.weight"]) for p in points}
  assert got == {(*w, b) for w in weights for b in (0.0, 200.0)}
  kd.sweep = {"zip": {"teachers": {"image": {"weight": (.2, .3)}, "pi": {"weight": (.2,)}}}}
  with pytest.raises(config_lib.ConfigError, match="zipped lists need one length"):
    config_lib.sweep(pipeline.stage_config(c, "three", str(tmp_path)))
