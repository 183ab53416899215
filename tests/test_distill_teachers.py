"""Teachers of the student_kd stage: import from lab `.pth.tar` files with {fold}/{seed}, cached
outputs equal to the in-step forward (and hence the same losses), and the cache decision."""

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd.engine import augment, teachers
from jkd import convert, distill, images
from jkd.engine import train as train_lib
from jkd.engine.runs import Run
from jkd.distill import Context

FIXTURES = Path(__file__).parent / "fixtures"


def _config(source_signal="", source_image="", aug=None):
  t = mc.ConfigDict({"signal": teachers.spec({"name": "wrn10_1", "ndim": 1}, source=source_signal),
                     "image": teachers.spec({"name": "wrn10_1", "ndim": 2, "image_size": 8},
                                            source=source_image)})
  loss = distill.loss_defaults(("ce", "kd", "sp"))
  loss.sp.update(weight=50.0, layers=(1, 2, 3))
  loss.alpha = 0.4
  c = mc.ConfigDict({"teachers": t, "augment": augment.default_config(),
                     "distill": {"teachers": ("signal", "image"), "cache": True, "cache_gb": 2.0},
                     "train": {"epochs": 4, "eval_batch_size": 7}, "loss": loss})
  if aug:
    c.augment.update(aug)
  return c


def _hp(c):
  hp = {f"teachers.{n}.weight": jnp.float32(1.0) for n in c.distill.teachers}
  hp["loss.alpha"] = jnp.float32(c.loss.alpha)
  for name in c.loss.terms:
    for k in distill.TERMS[name].per_run:
      hp[f"loss.{name}.{k}"] = jnp.float32(c.loss[name][k])
  return hp


def test_pth_tar_with_fold_and_seed_placeholders(tmp_path):
  # wrn10_1_2d: 2-D, 3 input channels, 4 classes (tests/test_convert.py)
  for fold in (0, 1):
    for seed in (7, 8):
      shutil.copy(FIXTURES / "wrn10_1_2d.pth.tar", tmp_path / f"img_f{fold}_s{seed}.pth.tar")
  c = _config(source_image=str(tmp_path / "img_f{fold}_s{seed}.pth.tar"))
  (_, image) = teachers.build(c, num_classes=4)
  runs = [Run(0, 0, 7, {}), Run(1, 1, 8, {}), Run(2, 1, 7, {})]
  stacked = teachers.load(image, runs, [(1,), (2,)], num_classes=4)
  want = convert.load_torch_wrn(FIXTURES / "wrn10_1_2d.pth.tar", ndim=2)
  for got, ref in zip(jax.tree.leaves(stacked), jax.tree.leaves(want)):
    assert got.shape == (3, *np.shape(ref))
    np.testing.assert_array_equal(got[2], ref)
  with pytest.raises(ValueError, match="does not exist"):
    teachers.load(image, [Run(0, 2, 7, {})], [(1,), (2,), (3,)], num_classes=4)
  with pytest.raises(ValueError, match="does not exist"):   # checked before anything trains
    teachers.check_source("image", c.teachers.image, [(0, 7), (2, 7)], [(1,), (2,), (3,)])
  teachers.check_source("image", c.teachers.image, [(0, 7), (1, 8)], [(1,), (2,)])
  with pytest.raises(ValueError, match="classes"):
    teachers.load(image, runs, [(1,), (2,)], num_classes=5)


@pytest.fixture(scope="module")
def world():
  c = _config()
  ts = teachers.build(c, num_classes=3)
  r = np.random.default_rng(0)
  x = jnp.asarray(r.normal(size=(20, 16, 3)), jnp.float32)
  mean = jnp.asarray(r.normal(size=(2, 3)) * 0.1, jnp.float32)
  std = jnp.asarray(1 + r.uniform(size=(2, 3)), jnp.float32)
  variables = []
  for i, t in enumerate(ts):
    keys = jax.random.split(jax.random.PRNGKey(i), 2)
    v = [t.model.init(k, images.image_input(t.spec.model, x[:2], x[:2]), train=False)
         for k in keys]
    v = jax.tree.map(lambda *a: jnp.stack(a), *v)
    # non-trivial running statistics so eval-mode BatchNorm matters
    v["batch_stats"] = jax.tree.map(lambda a: a + 0.3, v["batch_stats"])
    variables.append(v)
  return c, ts, x, mean, std, variables


def test_cached_outputs_give_the_same_losses(world):
  c, ts, x, mean, std, variables = world
  needs = distill.teacher_needs(c.loss)
  data = train_lib.Data(x, jnp.zeros(len(x), jnp.int32))
  runs = train_lib.Runs(key=jnp.zeros((2, 2), jnp.uint32), train=jnp.zeros((2, 1), jnp.int32),
                        train_count=jnp.zeros(2, jnp.int32), mean=mean, std=std, hp={})
  cache = [teachers.make_cache_fn(t, needs, 7)(v, data, runs) for t, v in zip(ts, variables)]
  idx = jnp.array([[3, 17, 0, 9, 11], [19, 2, 2, 5, 8]])
  xb = jax.vmap(lambda i, m, s: (x[i] - m) / s)(idx, mean, std)
  raw = jax.vmap(lambda i: x[i])(idx)
  run = lambda teacher_outputs, aux: jax.vmap(teacher_outputs)(aux, xb, raw, idx)
  direct = run(teachers.make_teacher_outputs(ts, [False, False], needs), variables)
  cached = run(teachers.make_teacher_outputs(ts, [True, True], needs), cache)
  mixed = run(teachers.make_teacher_outputs(ts, [False, True], needs), [variables[0], cache[1]])
  for a, b, m in zip(jax.tree.leaves(direct), jax.tree.leaves(cached), jax.tree.leaves(mixed)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a, m, rtol=1e-4, atol=1e-5)
  obj = distill.make_objective(c)
  student = jax.random.normal(jax.random.PRNGKey(5), (5, 3))
  feats = tuple(jax.random.normal(jax.random.PRNGKey(6 + i), (5, 16 // 2 ** i, 16 * 2 ** i))
                for i in range(3)) + (jnp.zeros((5, 64)),)
  y = jnp.array([0, 1, 2, 1, 0])
  losses = [obj(student, feats, y, _hp(c), Context(epoch=0,
                                            teachers=jax.tree.map(lambda a: a[0], t)))[0]
            for t in (direct, cached)]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  # the teachers really are in eval mode: a train-mode forward differs
  t0 = ts[0]
  v0 = jax.tree.map(lambda a: a[0], variables[0])
  (train_logits, _), _ = t0.model.apply(v0, xb[0], train=True, mutable=["batch_stats"])
  assert not np.allclose(train_logits, direct[0].logits[0], atol=1e-3)


def test_cache_plan_follows_augmentation_and_budget(world):
  c, ts, x, *_ = world
  needs = distill.teacher_needs(c.loss)
  plan, lines = teachers.cache_plan(ts, c, 20, 2, (16, 3), 3, needs)
  assert plan == [True, True] and all("cached" in s for s in lines)
  aug = _config(aug={"jitter": 0.05})
  plan, lines = teachers.cache_plan(ts, aug, 20, 2, (16, 3), 3, needs)
  assert plan == [False, False] and all("augmentation is active" in s for s in lines)
  per_window = teachers.output_bytes(ts[1], (16, 3), 3, needs)
  # 3 logits + GAF 8x8 teacher stages 8x8x16, 4x4x32, 2x2x64 floats
  assert per_window == 4 * (3 + 8 * 8 * 16 + 4 * 4 * 32 + 2 * 2 * 64)
  small = _config()
  small.distill.cache_gb = 1.1 * per_window * 40 / 2 ** 30   # room for the image teacher only
  plan, lines = teachers.cache_plan(ts, small, 20, 2, (16, 3), 3, needs)
  assert plan == [False, True] and "forward in every step" in lines[0]
