"""resnext1d: shapes (with the new-connection branch), a bottleneck and adaptive pooling vs numpy."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jkd import models
from jkd.models import resnext


def shapes(model, shape):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return v, jax.eval_shape(lambda v, x: model.apply(v, x), v, jnp.zeros(shape))


def test_shapes_default_and_with_new_connection():
  _, (logits, feats) = shapes(models.create("resnext1d", num_classes=5), (2, 187, 1))
  assert logits.shape == (2, 5)
  assert [f.shape for f in feats] == [(2, 187, 256), (2, 94, 512), (2, 47, 1024), (2, 1024)]
  model = models.create("resnext1d", num_classes=5, new_connection=(0, 2), blocks_per_stage=(1, 2, 1))
  v, (logits, feats) = shapes(model, (2, 187, 1))
  # stage 1 output concatenated with its branch along time: 187 -> 374; stage 2 halves it;
  # stage 3 halves again (94) and gets its own branch (-> 188).
  assert [f.shape for f in feats] == [(2, 374, 256), (2, 187, 512), (2, 188, 1024), (2, 1024)]
  branch = v["params"]["new_connection1"]
  assert branch["conv1"]["kernel"].shape == (7, 1, 64)
  assert branch["conv2"]["kernel"].shape == (1, 64, 256)
  assert set(v["params"]) >= {"stem_conv", "stage1_block0", "stage2_block1", "new_connection3", "fc"}
  assert "stage2_block1" in v["params"] and "stage3_block1" not in v["params"]
  # grouped 3-wide conv: width = 128 // 64 * 32 * 4 = 256, 32 groups of 8 input channels
  assert v["params"]["stage2_block0"]["conv2"]["kernel"].shape == (3, 8, 256)


def test_2d_input_and_errors():
  _, (_, feats) = shapes(models.create("resnext1d", num_classes=5, ndim=2, stages=(64, 128),
                                       new_connection=(1,)), (2, 8, 8, 3))
  assert [f.shape for f in feats] == [(2, 8, 8, 256), (2, 8, 4, 512), (2, 512)]
  with pytest.raises(ValueError, match="multiple of groups"):
    shapes(models.create("resnext1d", num_classes=5, stages=(32,)), (2, 8, 1))
  with pytest.raises(ValueError, match="new_connection stage indices"):
    shapes(models.create("resnext1d", num_classes=5, new_connection=(3,)), (2, 8, 1))
  with pytest.raises(ValueError, match="blocks_per_stage"):
    shapes(models.create("resnext1d", num_classes=5, blocks_per_stage=(1, 1)), (2, 8, 1))


def test_adaptive_avg_pool_bins():
  x = jnp.arange(10.0).reshape(1, 10, 1)
  # torch bins for 10 -> 4: [0, 3), [2, 5), [5, 8), [7, 10)
  got = resnext.adaptive_avg_pool(x, (4,))[0, :, 0]
  np.testing.assert_allclose(got, [1.0, 3.0, 6.0, 8.0])
  np.testing.assert_allclose(resnext.adaptive_avg_pool(x, (5,))[0, :, 0], [0.5, 2.5, 4.5, 6.5, 8.5])
  img = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(resnext.adaptive_avg_pool(img, (2, 2))[0, :, :, 0], [[2.5, 4.5],
                                                                                 [10.5, 12.5]])


def np_conv1d(x, w, stride=1, pad=0, groups=1):
  xp = np.pad(x, [(0, 0), (pad, pad), (0, 0)])
  win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[0], axis=1)[:, ::stride]
  cg, og = w.shape[1], w.shape[2] // groups
  return np.concatenate([np.einsum("blck,kco->blo", win[:, :, g * cg:(g + 1) * cg],
                                   w[:, :, g * og:(g + 1) * og]) for g in range(groups)], -1)


def np_bn(x, p):
  return (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5) * p["scale"] + p["bias"]


def test_bottleneck_matches_numpy_and_gemm_equals_lax():
  leaky = lambda a: np.where(a > 0, a, 0.01 * a)
  x = np.random.default_rng(0).normal(size=(2, 9, 16)).astype(np.float32)
  block = resnext.Bottleneck(mid_dim=64, out_dim=24, strides=2, groups=32)
  v = block.init(jax.random.key(0, impl="rbg"), x, train=False)  # rbg: cheap to compile
  out, _ = block.apply(v, x, train=True, mutable=["batch_stats"])
  lax_out, _ = block.clone(conv_impl="lax").apply(v, x, train=True, mutable=["batch_stats"])
  p = jax.tree.map(np.asarray, v["params"])
  r = leaky(np_bn(np_conv1d(x, p["conv1"]["kernel"], 2), p["bn1"]))
  r = leaky(np_bn(np_conv1d(r, p["conv2"]["kernel"], 1, 1, groups=32), p["bn2"]))
  r = np_bn(np_conv1d(r, p["conv3"]["kernel"]), p["bn3"])
  shortcut = np_bn(np_conv1d(x, p["proj_conv"]["kernel"], 2), p["proj_bn"])
  want = leaky(r + shortcut)
  assert out.shape == (2, 5, 24)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(lax_out, want, rtol=1e-4, atol=1e-4)
