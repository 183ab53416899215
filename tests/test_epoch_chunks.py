"""An epoch cut into chunks of steps (`jkd.engine.train.EpochProgram.run`, what the progress lines need)
is bit-identical to the epoch in one call, whatever the chunks; the pacer sizes them from the
measured step time."""

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

K, B, L, C, STEPS = 3, 8, 8, 2, 7


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(layers.BatchNorm()(layers.Conv(4, 3, padding=1)(x), train))
    h = nn.Dropout(0.3, deterministic=not train)(h)
    return layers.Linear(K, name="fc")(layers.global_avg_pool(h)), (h,)


class Fixed:
  """A pacer that hands out the given chunk sizes."""

  def __init__(self, sizes):
    self.sizes, self.recorded = list(sizes), []

  def size(self, remaining):
    return min(self.sizes.pop(0), remaining)

  def record(self, steps, seconds):
    self.recorded.append(steps)


@pytest.fixture(scope="module")
def world():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(80, L, C)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, K, size=80).astype(np.int32))
  c = config_lib.base()
  c.data.name = "synthetic"
  c.train.batch_size, c.train.epochs = B, 3
  c.optim.schedule, c.optim.lr = "constant", 0.1
  runs = [runs_lib.Run(0, 0, 1, {}), runs_lib.Run(1, 1, 2, {})]
  train = np.stack([np.arange(56), np.r_[np.arange(20, 60), np.zeros(16)]]).astype(np.int32)
  inputs = train_lib.Runs(key=state_lib.init_keys(np.array([1, 2])), train=jnp.asarray(train),
                          train_count=jnp.asarray([56, 40], jnp.int32),   # run 1 idles 2 steps
                          mean=jnp.zeros((2, C)), std=jnp.ones((2, C)),
                          hp=jax.tree.map(jnp.asarray, runs_lib.hparams(c, runs)))
  model = Tiny()
  program = train_lib.make_train_epoch(train_lib.Step(model, c, distill.make_objective(c), K), STEPS)
  init = train_lib.init_state(model, c, inputs.key, jnp.zeros((1, L, C)), inputs.hp)
  return dict(data=train_lib.Data(x, y), inputs=inputs, program=program, init=init)


def _two_epochs(w, chunks=None):
  state = jax.tree.map(jnp.asarray, w["init"])
  reported = []
  for e in range(2):
    pacer = None if chunks is None else Fixed(chunks)
    state, terms = w["program"].run(state, w["data"], w["inputs"], e, pacer=pacer, report=lambda done, sums: reported.append(done))
  return jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, terms), reported


def _same(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(u, v)


def test_any_chunking_is_bit_identical_to_one_call(world):
  one, terms, reported = _two_epochs(world)
  assert reported == [STEPS, STEPS]
  assert terms["steps"].tolist() == [7.0, 5.0]
  assert not np.array_equal(np.asarray(world["init"].params["fc"]["kernel"]),
                            one.params["fc"]["kernel"])
  for chunks in ([1] * STEPS, [3, 4], [2, 1, 4], [6, 1]):
    state, t, reported = _two_epochs(world, chunks)
    _same(one, state)
    _same(terms, t)
    assert reported[-1] == STEPS and len(reported) == 2 * len(chunks)
  called, _ = world["program"](jax.tree.map(jnp.asarray, world["init"]), world["data"],
                               world["inputs"], 0)
  ran, _ = world["program"].run(jax.tree.map(jnp.asarray, world["init"]), world["data"],
                                world["inputs"], 0, pacer=Fixed([2, 5]))
  _same(called, ran)


def test_compiled_ahead_of_time_equals_the_jitted_programs(world):
  state = jax.tree.map(jnp.asarray, world["init"])
  args = (world["data"], world["inputs"], 0)
  compiled = world["program"].lower(state, *args).compile()
  a, ta = compiled(state, *args)
  b, tb = world["program"](jax.tree.map(jnp.asarray, world["init"]), *args)
  _same(a, b)
  _same(ta, tb)


def test_pacer_sizes_chunks_from_the_measured_step_time():
  p = train_lib.Pacer(seconds=5.0)
  assert p.size(100) == 1            # compiles: one step
  p.record(1, 30.0)                  # compilation: not a step time
  assert p.per_step is None and p.size(100) == 1
  p.record(1, 0.5)
  assert p.size(100) == 10 and p.size(4) == 4
  p.record(8, 0.125)                 # 1/64 s a step
  assert p.size(10_000) == 320
  p.record(320, 320 * 20.0)       # slower than the target: still one step
  assert p.size(100) == 1


def test_epoch_chunks_benchmark_runs_and_finds_the_chunks_bit_identical():
  import argparse
  from jkd.bench import epoch_chunks
  a = argparse.Namespace(model="wrn10_1", runs=1, batch=8, length=16, channels=3, classes=3,
                         steps=4, chunk=3, repeats=1, devices=0)
  out = epoch_chunks.bench(a)
  assert out["calls_per_epoch"] == 2 and out["bit_identical"] and out["ratio"] > 0
