"""The vmapped program: a run trained among others equals it trained alone; idle steps and failed
runs leave the state unchanged; evaluation counts match a direct forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import config as config_lib
from jkd import distill
from jkd.engine import runs as runs_lib
from jkd.engine import state as state_lib
from jkd.engine import train as train_lib
from jkd.models import layers

K, B, L, C = 3, 8, 8, 2


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(layers.BatchNorm()(layers.Conv(4, 3, padding=1)(x), train))
    return layers.Linear(K, name="fc")(layers.global_avg_pool(h)), (h,)


def _config():
  c = config_lib.base()
  c.data.name = "synthetic"
  c.train.batch_size = B
  c.train.epochs = 3
  c.optim.schedule = "constant"
  c.optim.lr = 0.1
  return c


@pytest.fixture(scope="module")
def world():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, L, C)).astype(np.float32)
  y = rng.integers(0, K, size=60).astype(np.int32)
  train = np.zeros((2, 40), np.int32)
  train[0] = np.arange(40)                 # 5 batches
  train[1, :24] = np.arange(20, 44)        # 3 batches: idles on 2 of 5 steps
  counts = np.array([40, 24], np.int32)
  mean = np.stack([x[:40].mean((0, 1)), x[20:44].mean((0, 1))])
  std = np.stack([x[:40].std((0, 1)), x[20:44].std((0, 1))])
  config = _config()
  # runs: (fold 0, seed 1), (fold 1, seed 2, lr 0.05), (fold 0, seed 3)
  runs = [runs_lib.Run(0, 0, 1, {}), runs_lib.Run(1, 1, 2, {"optim.lr": 0.05}),
          runs_lib.Run(2, 0, 3, {})]
  model = Tiny()
  step = train_lib.Step(model, config, distill.make_objective(config), K)
  epoch3 = train_lib.make_train_epoch(step, 5)
  epoch1 = train_lib.make_train_epoch(step, 3)
  return dict(data=train_lib.Data(jnp.asarray(x), jnp.asarray(y)), x=jnp.asarray(x), y=jnp.asarray(y), train=train, counts=counts, mean=mean, std=std,
              config=config, runs=runs, model=model, epoch3=epoch3, epoch1=epoch1)


def _inputs(w, runs, **hp_override):
  fold = np.array([r.fold for r in runs])
  hp = runs_lib.hparams(w["config"], runs)
  for k, v in hp_override.items():
    hp[k] = np.asarray(v, np.float32)
  return train_lib.Runs(key=state_lib.init_keys(np.array([r.seed for r in runs])),
                        train=jnp.asarray(w["train"][fold]),
                        train_count=jnp.asarray(w["counts"][fold]),
                        mean=jnp.asarray(w["mean"][fold]), std=jnp.asarray(w["std"][fold]),
                        hp=jax.tree.map(jnp.asarray, hp))


def _train(w, fn, runs, epochs=2, **hp_override):
  inputs = _inputs(w, runs, **hp_override)
  init = train_lib.init_state(w["model"], w["config"], inputs.key, jnp.zeros((1, L, C)), inputs.hp)
  state = jax.tree.map(jnp.asarray, init)
  steps = []
  for e in range(epochs):
    state, terms = fn(state, w["data"], inputs, e)
    steps.append(np.asarray(terms["steps"]))
  return init, jax.tree.map(np.asarray, state), steps, terms


def _close(a, b, tol=1e-5):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def together(world):
  return _train(world, world["epoch3"], world["runs"])


def test_run_in_vmapped_program_equals_run_alone(world, together):
  _, alone, steps_alone, _ = _train(world, world["epoch1"], [world["runs"][1]])
  _, state, steps, _ = together
  pick = lambda s: jax.tree.map(lambda a: a[1:2], s)
  _close(pick(state.params), alone.params)
  _close(pick(state.batch_stats), alone.batch_stats)
  _close(pick(state.opt_state), alone.opt_state)
  # the short fold idled on 2 of the 5 steps of each epoch
  np.testing.assert_array_equal(steps[0], [5, 3, 5])
  np.testing.assert_array_equal(state.step, [10, 6, 10])
  np.testing.assert_array_equal(alone.step, [6])
  # different seeds -> different runs on the same fold
  assert not np.allclose(state.params["fc"]["kernel"][0], state.params["fc"]["kernel"][2])


def test_idle_step_leaves_state_unchanged(world):
  inputs = _inputs(world, world["runs"][:1])
  st = train_lib.init_state(world["model"], world["config"], inputs.key, jnp.zeros((1, L, C)),
                            inputs.hp)
  one = jax.tree.map(lambda a: jnp.asarray(a[0]), st)
  run = jax.tree.map(lambda a: a[0], inputs)
  train_step = train_lib.Step(world["model"], world["config"],
                              distill.make_objective(world["config"]), K)
  clock = train_lib.Clock(jnp.int32(0), jnp.int32(0))
  step = jax.jit(lambda active: train_step(
      one, world["data"], run, train_lib.StepBatch(jnp.arange(B), active, jax.random.PRNGKey(0)),
      clock))
  idle, terms = step(jnp.bool_(False))
  for u, v in zip(jax.tree.leaves(idle), jax.tree.leaves(one)):
    np.testing.assert_array_equal(u, v)
  assert float(terms["count"]) == 0.0
  moved, _ = step(jnp.bool_(True))
  assert not np.allclose(moved.params["fc"]["kernel"], one.params["fc"]["kernel"])


def test_non_finite_run_stops_alone(world, together):
  init, state, _, terms = _train(world, world["epoch3"], world["runs"],
                                 **{"optim.lr": [0.1, 0.05, np.inf]})
  np.testing.assert_array_equal(state.failed, [False, False, True])
  _, ref, _, _ = together
  pick = lambda s, i: jax.tree.map(lambda a: a[i], s)
  _close(pick(state.params, slice(0, 2)), pick(ref.params, slice(0, 2)))
  for u, v in zip(jax.tree.leaves(pick(state.params, 2)), jax.tree.leaves(pick(init.params, 2))):
    np.testing.assert_array_equal(u, v)       # frozen at its last good (here: initial) state
  assert state.step[2] == 0 and np.isfinite(terms["loss"]).all()


def test_evaluate_and_best(world, together):
  _, state, _, _ = together
  w = world
  evaluate = train_lib.make_evaluate(w["model"], w["config"], K)
  idx = np.stack([np.arange(44, 60)] * 3).reshape(3, 2, 8)
  mask = np.ones((3, 2, 8), np.float32)
  mask[:, 1, 5:] = 0                                   # 13 real examples
  fold = np.array([r.fold for r in w["runs"]])
  runs = train_lib.Runs(key=jnp.zeros((3, 2), jnp.uint32), train=jnp.zeros((3, 1), jnp.int32),
                        train_count=jnp.zeros(3, jnp.int32), mean=jnp.asarray(w["mean"][fold]),
                        std=jnp.asarray(w["std"][fold]), hp={})
  conf, loss = evaluate(state.variables, w["data"], runs,
                        train_lib.Plan(jnp.asarray(idx), jnp.asarray(mask)))
  conf = np.asarray(conf)
  for r in range(3):
    v = jax.tree.map(lambda a: a[r], state.variables)
    xs = (np.asarray(w["x"])[44:57] - w["mean"][fold[r]]) / w["std"][fold[r]]
    logits, _ = w["model"].apply(v, jnp.asarray(xs), train=False)
    expect = np.zeros((K, K))
    np.add.at(expect, (np.asarray(w["y"])[44:57], np.asarray(logits).argmax(-1)), 1)
    np.testing.assert_array_equal(conf[r], expect)
    logp = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_allclose(loss[r], -logp[np.arange(13), np.asarray(w["y"])[44:57]].mean(),
                               rtol=1e-5)
  st = jax.tree.map(jnp.asarray, state)
  st, improved = train_lib.update_best(st, jnp.array([0.5, 0.2, 0.7]))
  st, improved = train_lib.update_best(st, jnp.array([0.4, 0.3, 0.7]))
  np.testing.assert_array_equal(improved, [False, True, False])
  np.testing.assert_allclose(st.best_score, [0.5, 0.3, 0.7])
