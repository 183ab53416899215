"""ResNet-18/34 (1-D and 2-D): stage shapes, shortcut layout, and a ResBlock against numpy."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jkd import models
from jkd.models import resnet


def shapes(model, shape):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return v, jax.eval_shape(lambda v, x: model.apply(v, x), v, jnp.zeros(shape))


@pytest.mark.parametrize("name,ndim,shape,stages", [
    # L=100: stem conv 7/2/3 -> 50, max-pool 3/2/1 -> 25, then 25, 13, 7, 4.
    ("resnet18", 1, (2, 100, 40), [(25, 64), (13, 128), (7, 256), (4, 512)]),
    ("resnet34", 1, (2, 100, 40), [(25, 64), (13, 128), (7, 256), (4, 512)]),
    # 64x64: 32 -> 16, then 16, 8, 4, 2.
    ("resnet18", 2, (2, 64, 64, 3), [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]),
    ("resnet34", 2, (2, 64, 64, 3), [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]),
])
def test_stage_shapes(name, ndim, shape, stages):
  v, (logits, feats) = shapes(models.create(name, num_classes=6, ndim=ndim), shape)
  assert logits.shape == (2, 6)
  assert [f.shape for f in feats] == [(2, *s) for s in stages] + [(2, stages[-1][-1])]
  p = v["params"]
  blocks = [k for k in p if "_block" in k]
  assert len(blocks) == sum(resnet.STAGE_SIZES[name])
  assert p["stem"]["conv"]["kernel"].shape == (7,) * ndim + (shape[-1], 64)
  # every block has a 1x1 shortcut conv with bias (docs/protocol.md §3: "shortcut = 1x1 conv")
  sc = p["stage2_block1"]["shortcut"]
  assert sc["kernel"].shape == (1,) * ndim + (128, 128) and sc["bias"].shape == (128,)
  assert p["stage3_block0"]["shortcut"]["kernel"].shape == (1,) * ndim + (128, 256)


def np_conv1d(x, w, stride, pad):
  xp = np.pad(x, [(0, 0), (pad, pad), (0, 0)])
  win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[0], axis=1)[:, ::stride]
  return np.einsum("blck,kco->blo", win, w)


def np_bn_relu(x, p):
  y = (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5) * p["scale"] + p["bias"]
  return np.maximum(y, 0)


def test_resblock_matches_numpy():
  block = resnet.ResBlock(features=6, strides=2)
  x = np.random.default_rng(0).normal(size=(3, 9, 4)).astype(np.float32)
  v = block.init(jax.random.key(0, impl="rbg"), x, train=False)  # rbg: cheap to compile
  out, _ = block.apply(v, x, train=True, mutable=["batch_stats"])
  p = jax.tree.map(np.asarray, v["params"])
  r = np_bn_relu(np_conv1d(x, p["conv_block1"]["conv"]["kernel"], 2, 1), p["conv_block1"]["bn"])
  r = np_bn_relu(np_conv1d(r, p["conv_block2"]["conv"]["kernel"], 1, 1), p["conv_block2"]["bn"])
  shortcut = np_conv1d(x, p["shortcut"]["kernel"], 2, 0) + p["shortcut"]["bias"]
  np.testing.assert_allclose(out, np.maximum(r + shortcut, 0), rtol=1e-4, atol=1e-5)
  assert out.shape == (3, 5, 6)
