"""Wide-ResNet: shapes, parameter-tree contract, counts, init, BN statistics, and a numpy forward."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jkd import models


def shapes(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def random_variables(model, shape, seed=0):
  """Variables of `model`'s structure filled with numpy draws: no init compile, nontrivial BN."""
  tree = shapes(model, shape)
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = jax.tree_util.keystr(path)
    if "var" in name or "scale" in name:
      return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
    return (rng.normal(size=a.shape) * (0.5 if "kernel" in name else 0.2)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, tree)


TINY = (4, 8, 2)  # the input shape most tests share, so eager op compiles are reused


def count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


# ---- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,ndim,shape,stages", [
    ("wrn16_1", 1, (2, 100, 3), [(100, 16), (50, 32), (25, 64)]),
    ("wrn10_3", 1, (2, 100, 3), [(100, 48), (50, 96), (25, 192)]),
    ("wrn10_1", 2, (2, 64, 64, 2), [(64, 64, 16), (32, 32, 32), (16, 16, 64)]),
    ("wrn10_2", 2, (2, 8, 8, 2), [(8, 8, 32), (4, 4, 64), (2, 2, 128)]),
])
def test_output_and_stage_shapes(name, ndim, shape, stages):
  model = models.create(name, num_classes=7, ndim=ndim)
  v = shapes(model, shape)
  logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x), v, jnp.zeros(shape))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  # the stage maps, then the pooled embedding the classifier reads
  assert [f.shape for f in feats] == [(2, *s) for s in stages] + [(2, stages[-1][-1])]


# ---- parameter tree contract (the torch checkpoint converter maps onto it) ----------------------

def test_parameter_tree_names_and_shapes():
  v = shapes(models.create("wrn16_2", num_classes=5), (1, 10, 3))
  p, s = v["params"], v["batch_stats"]
  assert set(p) == {"conv1", "block1", "block2", "block3", "batch_norm", "fc"}
  assert p["conv1"]["kernel"].shape == (3, 3, 16)
  for b, (cin, w) in zip(("block1", "block2", "block3"), ((16, 32), (32, 64), (64, 128))):
    assert set(p[b]) == {"layer_0", "layer_1"}
    l0, l1 = p[b]["layer_0"], p[b]["layer_1"]
    assert set(l0) == {"batch_norm1", "conv1", "batch_norm2", "conv2", "conv_inp"}
    assert set(l1) == {"batch_norm1", "conv1", "batch_norm2", "conv2"}
    assert l0["conv1"]["kernel"].shape == (3, cin, w)
    assert l0["conv2"]["kernel"].shape == (3, w, w)
    assert l0["conv_inp"]["kernel"].shape == (1, cin, w)
    assert set(l0["batch_norm1"]) == {"scale", "bias"} and l0["batch_norm1"]["scale"].shape == (cin,)
    assert set(s[b]["layer_0"]["batch_norm2"]) == {"mean", "var"}
    assert s[b]["layer_1"]["batch_norm1"]["var"].shape == (w,)
  assert p["fc"]["kernel"].shape == (128, 5) and p["fc"]["bias"].shape == (5,)
  assert s["batch_norm"]["mean"].shape == (128,)


def test_k1_first_stage_has_identity_shortcut_2d_kernels():
  p = shapes(models.create("wrn16_1", num_classes=5, ndim=2), (1, 8, 8, 4))["params"]
  assert "conv_inp" not in p["block1"]["layer_0"]
  assert p["block2"]["layer_0"]["conv_inp"]["kernel"].shape == (1, 1, 16, 32)
  assert p["block3"]["layer_1"]["conv2"]["kernel"].shape == (3, 3, 64, 64)


def hand_count(depth, k, c, classes):
  """Parameters of a WRN counted block by block (conv weights, BN scale+bias, fc)."""
  n = (depth - 4) // 6
  total = 3 * c * 16
  cin = 16
  for w, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
    for i in range(n):
      total += 2 * cin + 3 * cin * w + 2 * w + 3 * w * w
      if i == 0 and (stride != 1 or w != cin):
        total += cin * w  # conv_inp
      cin = w
  return total + 2 * cin + cin * classes + classes


def test_parameter_counts():
  # wrn16_1, 40 channels, 12 classes, by hand: stem 1920; stage1 2 x 1600; stage2 5216 + 6272;
  # stage3 20672 + 24832; head BN 128 + fc 780.
  assert hand_count(16, 1, 40, 12) == 1920 + 3200 + 11488 + 45504 + 128 + 780 == 63020
  for name, (d, k) in (("wrn16_1", (16, 1)), ("wrn28_3", (28, 3))):
    v = shapes(models.create(name, num_classes=12), (1, 8, 40))
    assert count(v["params"]) == hand_count(d, k, 40, 12)
  # wrn28_3 by hand: stem 1920; stage1 10112 + 3 x 14016; stage2 46368 + 3 x 55680;
  # stage3 184896 + 3 x 221952; head 384 + 2316.
  assert hand_count(28, 3, 40, 12) == 1920 + 52160 + 213408 + 850752 + 2700 == 1120940


# ---- init ---------------------------------------------------------------------------------------

def test_init_statistics_and_independent_vmapped_init():
  model = models.create("wrn10_4", num_classes=3)
  keys = jax.random.split(jax.random.key(0, impl="rbg"), 2)  # rbg: much faster to compile
  runs = jax.jit(jax.vmap(lambda k: model.init(k, jnp.zeros((1, 4, 2)), train=False)))(keys)
  w0, w1 = (runs["params"]["block1"]["layer_0"]["conv1"]["kernel"][r] for r in (0, 1))
  assert not np.allclose(w0, w1)
  v = jax.tree.map(lambda a: a[0], runs)
  p = v["params"]
  w = np.asarray(p["block3"]["layer_0"]["conv2"]["kernel"])          # (3, 256, 256)
  assert abs(w.std() / np.sqrt(2 / (3 * 256)) - 1) < 0.02 and abs(w.mean()) < 0.01 * w.std()
  w2 = np.asarray(p["block3"]["layer_0"]["conv_inp"]["kernel"])      # (1, 128, 256)
  assert abs(w2.std() / np.sqrt(2 / 256) - 1) < 0.03
  bn = p["block2"]["layer_0"]["batch_norm2"]
  np.testing.assert_array_equal(bn["scale"], 1.0)
  np.testing.assert_array_equal(bn["bias"], 0.0)
  np.testing.assert_array_equal(p["fc"]["bias"], 0.0)
  bound = 1 / np.sqrt(256)
  fc = np.asarray(p["fc"]["kernel"])
  assert np.abs(fc).max() <= bound and np.abs(fc).max() > 0.9 * bound
  np.testing.assert_array_equal(v["batch_stats"]["batch_norm"]["var"], 1.0)


# ---- an independent numpy forward -----------------------------------------------------------------

def np_conv(x, w, stride, pad):
  """PyTorch conv on channels-last x via sliding windows; w (*window, in, out)."""
  nd = x.ndim - 2
  xp = np.pad(x, [(0, 0)] + [(pad, pad)] * nd + [(0, 0)])
  win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[:nd], axis=tuple(range(1, nd + 1)))
  win = win[(slice(None),) + (slice(None, None, stride),) * nd]     # (B, *out, C, *window)
  if nd == 1:
    return np.einsum("blck,kco->blo", win, w)
  return np.einsum("bhwcij,ijco->bhwo", win, w)


def np_bn(x, p, s, train):
  axes = tuple(range(x.ndim - 1))
  mean, var = (x.mean(axes), x.var(axes)) if train else (s["mean"], s["var"])
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_wrn(p, s, x, train):
  relu = lambda a: np.maximum(a, 0)
  h = np_conv(x, p["conv1"]["kernel"], 1, 1)
  feats = []
  for b, stride in zip(("block1", "block2", "block3"), (1, 2, 2)):
    for i in range(len(p[b])):
      lp, ls = p[b][f"layer_{i}"], s[b][f"layer_{i}"]
      st = stride if i == 0 else 1
      a = relu(np_bn(h, lp["batch_norm1"], ls["batch_norm1"], train))
      r = np_conv(a, lp["conv1"]["kernel"], st, 1)
      r = np_conv(relu(np_bn(r, lp["batch_norm2"], ls["batch_norm2"], train)), lp["conv2"]["kernel"], 1, 1)
      h = (np_conv(a, lp["conv_inp"]["kernel"], st, 0) if "conv_inp" in lp else h) + r
    feats.append(h)
  h = relu(np_bn(h, p["batch_norm"], s["batch_norm"], train))
  pooled = h.mean(axis=tuple(range(1, h.ndim - 1)))
  return pooled @ p["fc"]["kernel"] + p["fc"]["bias"], feats + [pooled]


@pytest.mark.parametrize("name,ndim,shape", [("wrn10_2", 1, (4, 12, 3)), ("wrn10_1", 2, (3, 6, 6, 2))])
@pytest.mark.parametrize("train", [True, False])
def test_matches_numpy_forward(name, ndim, shape, train):
  model = models.create(name, num_classes=5, ndim=ndim)
  v = random_variables(model, shape)
  p, s = v["params"], v["batch_stats"]
  x = np.random.default_rng(3).normal(size=shape)
  (logits, feats), _ = model.apply({"params": p, "batch_stats": s}, jnp.asarray(x, jnp.float32),
                                   train=train, mutable=["batch_stats"])
  want_logits, want_feats = np_wrn(jax.tree.map(np.asarray, p), jax.tree.map(np.asarray, s), x,
                                   train)
  assert len(feats) == len(want_feats) == 4
  for got, want in zip(feats, want_feats):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
  np.testing.assert_allclose(logits, want_logits, rtol=2e-4, atol=2e-4 * np.abs(want_logits).max())


# ---- BatchNorm running statistics ---------------------------------------------------------------

def test_running_stats_after_train_step_follow_pytorch_formula():
  model = models.create("wrn10_1", num_classes=3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=TINY), jnp.float32)
  v = random_variables(model, x.shape)
  old = v["batch_stats"]
  (_, feats), new = model.apply(v, x, train=True, mutable=["batch_stats"])
  stats = new["batch_stats"]
  # Head BN sees the stage-3 output (B * L = 4 * 3 values per channel).
  f3 = np.asarray(feats[2], np.float64).reshape(-1, 64)
  o = old["batch_norm"]
  np.testing.assert_allclose(stats["batch_norm"]["mean"], 0.9 * o["mean"] + 0.1 * f3.mean(0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["batch_norm"]["var"], 0.9 * o["var"] + 0.1 * f3.var(0, ddof=1),
                             rtol=1e-5)
  # The first BN sees the stem conv's output.
  stem = np_conv(np.asarray(x, np.float64), np.asarray(v["params"]["conv1"]["kernel"]), 1, 1)
  stem = stem.reshape(-1, 16)
  bn, o = stats["block1"]["layer_0"]["batch_norm1"], old["block1"]["layer_0"]["batch_norm1"]
  np.testing.assert_allclose(bn["mean"], 0.9 * o["mean"] + 0.1 * stem.mean(0), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(bn["var"], 0.9 * o["var"] + 0.1 * stem.var(0, ddof=1), rtol=1e-4)


# ---- implementations, determinism, dropout, dtype -----------------------------------------------

def test_gemm_and_lax_agree_on_whole_model():
  gemm = models.create("wrn10_2", num_classes=5, conv_impl="gemm")
  lax = models.create("wrn10_2", num_classes=5, conv_impl="lax")
  shape = (4, 12, 3)
  v = random_variables(gemm, shape)
  x = jax.random.normal(jax.random.key(1), shape)
  (a, fa), sa = gemm.apply(v, x, train=True, mutable=["batch_stats"])
  (b, fb), sb = lax.apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  for u, w in zip(fa + tuple(jax.tree.leaves(sa)), fb + tuple(jax.tree.leaves(sb))):
    np.testing.assert_allclose(u, w, rtol=1e-4, atol=1e-4)


def test_eval_is_deterministic_and_dropout_only_acts_in_training():
  model = models.create("wrn10_1", num_classes=3, dropout=0.5)
  plain = models.create("wrn10_1", num_classes=3)
  x = jax.random.normal(jax.random.key(0), TINY)
  v = random_variables(model, x.shape)
  a, b = model.apply(v, x, train=False)[0], model.apply(v, x, train=False)[0]
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, plain.apply(v, x, train=False)[0])
  with pytest.raises(Exception, match="dropout"):
    model.apply(v, x, train=True, mutable=["batch_stats"])
  run = lambda k: model.apply(v, x, train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(k, impl="rbg")})[0][0]
  no_drop = plain.apply(v, x, train=True, mutable=["batch_stats"])[0][0]
  assert not np.allclose(run(1), no_drop) and not np.allclose(run(1), run(2))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.create("wrn10_1", num_classes=3, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), TINY)
  v = random_variables(model, x.shape)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
  logits, feats = model.apply(v, x)
  assert logits.dtype == jnp.float32 and feats[0].dtype == jnp.bfloat16
  ref = models.create("wrn10_1", num_classes=3).apply(v, x)[0]
  np.testing.assert_allclose(logits, ref, rtol=0.1, atol=0.1)


def test_2d_wrn_gives_the_same_outputs_on_gaf_factors_as_on_the_images():
  from jkd.images import gaf
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 12, 3)), jnp.float32)
  model = models.create("wrn10_1", num_classes=4, ndim=2)
  images = gaf.gramian_angular_field(x, 8)
  v = model.init(jax.random.PRNGKey(0), images, train=False)
  both = jax.jit(lambda v, x: [model.apply(v, inp, train=False)
                               for inp in (gaf.gaf_factors(x, 8), gaf.gramian_angular_field(x, 8))])
  (za, fa), (zb, fb) = both(v, x)
  np.testing.assert_allclose(za, zb, atol=1e-4)
  for a, b in zip(fa, fb):
    np.testing.assert_allclose(a, b, atol=1e-4)
