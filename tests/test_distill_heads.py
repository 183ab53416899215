"""jkd.distill.heads: shapes (1-D and 2-D), RepDistiller's ConvReg rules, the transposed
convolution and pooling against numpy loops, init statistics, BatchNorm statistics, vmap over runs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd.distill import heads


def _close(a, b, rtol=2e-5, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _init(module, x, seed=0, **kw):
  return module.init(jax.random.PRNGKey(seed), x, **kw)


def _shapes(module, shape, **kw):
  """(variables, output) of `init_with_output` as shapes only: traced, never compiled."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  out, v = jax.eval_shape(lambda x: module.init_with_output(jax.random.PRNGKey(0), x, **kw), x)
  return v, out


def np_adaptive_pool_1d(x, out):
  """x (B, L, C) -> (B, out, C), PyTorch's adaptive_avg_pool1d bins."""
  n = x.shape[1]
  return np.stack([x[:, (i * n) // out: -(-((i + 1) * n) // out)].mean(1) for i in range(out)], 1)


# ------------------------------------------------------------------------------------------------
# ConvReg


@pytest.mark.parametrize("s,t,kind,kernel,stride,pad", [
    ((8,), (4,), "conv", (3,), (2,), (1,)),
    ((4,), (8,), "transpose", (4,), (2,), (1,)),
    ((7,), (5,), "conv", (3,), (1,), (0,)),
    ((6,), (6,), "conv", (1,), (1,), (0,)),
    ((8, 8), (4, 4), "conv", (3, 3), (2, 2), (1, 1)),
    ((4, 4), (8, 8), "transpose", (4, 4), (2, 2), (1, 1)),
    ((6, 5), (4, 4), "conv", (3, 2), (1, 1), (0, 0)),
])
def test_conv_reg_spec_follows_repdistillers_rules(s, t, kind, kernel, stride, pad):
  assert heads.conv_reg_spec(s, t) == (kind, kernel, stride, pad)


@pytest.mark.parametrize("s,t", [((3,), (5,)), ((4, 4), (5, 5)), ((8, 4), (4, 8)), ((4,), (2, 2))])
def test_conv_reg_spec_raises_a_one_line_value_error(s, t):
  with pytest.raises(ValueError) as err:
    heads.conv_reg_spec(s, t)
  assert "\n" not in str(err.value) and "ConvReg" in str(err.value)


@pytest.mark.parametrize("s,t", [((8,), (4,)), ((4,), (8,)), ((7,), (5,)), ((8, 8), (4, 4)),
                                 ((4, 4), (8, 8)), ((6, 5), (4, 4))])
def test_conv_reg_maps_student_maps_onto_teacher_shapes(s, t):
  reg = heads.ConvReg(5, s, t)
  v, y = _shapes(reg, (2, *s, 3), train=True)
  assert y.shape == (2, *t, 5)
  assert set(v["params"]) == {"conv", "bn"} and "bias" in v["params"]["conv"]
  assert set(v["batch_stats"]["bn"]) == {"mean", "var"}
  with pytest.raises(ValueError, match="built for student maps"):
    _shapes(reg, (2, *(d + 1 for d in s), 3), train=False)


def test_conv_transpose_matches_pytorch_semantics_by_scatter():
  x = np.random.default_rng(1).normal(size=(2, 3, 2))
  mod = heads.ConvTranspose(4, kernel_size=4, strides=2, padding=1)
  v = _init(mod, jnp.asarray(x, jnp.float32))
  w, b = np.asarray(v["params"]["kernel"], np.float64), np.asarray(v["params"]["bias"], np.float64)
  full = np.zeros((2, (3 - 1) * 2 + 4, 4))
  for i in range(3):                                        # y[s·i + k] += x[i] · W[k]
    for k in range(4):
      full[:, 2 * i + k] += x[:, i] @ w[k]
  want = full[:, 1:-1] + b                                  # crop `padding` on both sides
  _close(mod.apply(v, jnp.asarray(x, jnp.float32)), want)
  x2 = np.random.default_rng(2).normal(size=(1, 2, 3, 2))
  v2 = _init(mod, jnp.asarray(x2, jnp.float32))
  w2, b2 = np.asarray(v2["params"]["kernel"]), np.asarray(v2["params"]["bias"])
  full2 = np.zeros((1, 6, 8, 4))
  for i in range(2):
    for j in range(3):
      for ki in range(4):
        for kj in range(4):
          full2[:, 2 * i + ki, 2 * j + kj] += x2[:, i, j] @ w2[ki, kj]
  _close(mod.apply(v2, jnp.asarray(x2, jnp.float32)), full2[:, 1:-1, 1:-1] + b2)


def test_conv_reg_eval_is_conv_plus_bias_then_fresh_bn_then_relu():
  x = np.random.default_rng(3).normal(size=(2, 7, 3))
  reg = heads.ConvReg(4, (7,), (5,))
  v = _init(reg, jnp.asarray(x, jnp.float32), train=False)
  w, b = np.asarray(v["params"]["conv"]["kernel"]), np.asarray(v["params"]["conv"]["bias"])
  conv = np.stack([np.einsum("bkc,kco->bo", x[:, i:i + 3], w) for i in range(5)], 1) + b
  want = np.maximum(conv / math.sqrt(1 + 1e-5), 0)        # running stats 0 / 1 at init
  _close(reg.apply(v, jnp.asarray(x, jnp.float32), train=False), want)


# ------------------------------------------------------------------------------------------------
# Init statistics, BatchNorm statistics


def test_init_statistics_follow_each_source():
  # ConvReg: PyTorch default conv init U(±1/sqrt(fan_in)), kernel and bias
  v = _init(heads.ConvReg(64, (6,), (4,)), jnp.zeros((1, 6, 32)), train=False)["params"]["conv"]
  bound = 1 / math.sqrt(3 * 32)
  assert 0.97 * bound < float(jnp.max(jnp.abs(v["kernel"]))) <= bound
  assert 0 < float(jnp.max(jnp.abs(v["bias"]))) <= bound
  # its transposed conv: PyTorch's fan-in of a transposed weight = out_channels · window
  v = _init(heads.ConvReg(32, (4,), (8,)), jnp.zeros((1, 4, 64)), train=False)["params"]["conv"]
  assert v["kernel"].shape == (4, 64, 32)
  bound = 1 / math.sqrt(32 * 4)
  assert 0.97 * bound < float(jnp.max(jnp.abs(v["kernel"]))) <= bound
  assert 0 < float(jnp.max(jnp.abs(v["bias"]))) <= bound
  # SRRL connector: N(0, sqrt(2 / (k·k·out))), no bias
  v = _init(heads.SRRLConnector(256), jnp.zeros((1, 2, 2, 64)), train=False)["params"]
  assert set(v["conv"]) == {"kernel"}
  _close(jnp.std(v["conv"]["kernel"]), math.sqrt(2 / 256), rtol=0.03)
  _close(v["bn"]["scale"], np.ones(256))
  _close(v["bn"]["bias"], np.zeros(256))
  # SimKD projector: no biases, PyTorch default kernels
  v = _init(heads.SimKDProjector(64), jnp.zeros((1, 4, 48)), train=False)["params"]
  assert all(set(v[f"conv{i}"]) == {"kernel"} for i in (1, 2, 3))
  assert 0.97 / math.sqrt(48) < float(jnp.max(jnp.abs(v["conv1"]["kernel"]))) <= 1 / math.sqrt(48)
  assert v["conv2"]["kernel"].shape == (3, 32, 32) and v["conv3"]["kernel"].shape == (1, 32, 64)
  # CRD Embed: PyTorch Linear, bias U(±1/sqrt(in)) (not zero)
  v = _init(heads.Embed(128), jnp.zeros((1, 100)))["params"]["linear"]
  assert 0.97 / 10 < float(jnp.max(jnp.abs(v["kernel"]))) <= 0.1
  assert 0 < float(jnp.max(jnp.abs(v["bias"]))) <= 0.1
  # CA-MKD Embed: 1x1 conv with bias
  v = _init(heads.CAMKDEmbed(16), jnp.zeros((1, 3, 3, 25)), train=False)["params"]
  assert set(v["conv1"]) == {"kernel", "bias"} and 0 < float(jnp.max(jnp.abs(v["conv1"]["bias"]))) <= 0.2


def test_batchnorm_statistics_update_in_train_mode_only():
  x = _x((4, 8, 3)) * 2 + 1
  reg = heads.ConvReg(5, (8,), (4,), use_relu=False)
  v = _init(reg, x, train=False)
  y, new = reg.apply(v, x, train=True, mutable=["batch_stats"])
  _close(jnp.mean(y, axis=(0, 1)), np.zeros(5), atol=1e-5)                 # batch statistics
  _close(jnp.var(y, axis=(0, 1)), np.ones(5), rtol=1e-3)
  stats = new["batch_stats"]["bn"]
  assert float(jnp.max(jnp.abs(stats["mean"]))) > 0                        # 0.1 · batch mean
  assert not np.allclose(np.asarray(stats["var"]), 1.0)
  _, same = reg.apply(v, x, train=False, mutable=["batch_stats"])
  _close(same["batch_stats"]["bn"]["mean"], np.zeros(5))


# ------------------------------------------------------------------------------------------------
# SimKD, SRRL, CRD, CA-MKD heads and alignment


def test_adaptive_avg_pool_matches_pytorch_bins_on_uneven_sizes():
  x = np.random.default_rng(4).normal(size=(2, 10, 3))
  _close(heads.adaptive_avg_pool(jnp.asarray(x, jnp.float32), (4,)), np_adaptive_pool_1d(x, 4))
  x2 = np.random.default_rng(5).normal(size=(1, 7, 5, 2))
  rows = np_adaptive_pool_1d(x2.reshape(1, 7, 10), 3).reshape(1, 3, 5, 2)        # H: 7 -> 3
  want = np_adaptive_pool_1d(rows.transpose(0, 2, 1, 3).reshape(1, 5, 6), 2)     # W: 5 -> 2
  want = want.reshape(1, 2, 3, 2).transpose(0, 2, 1, 3)
  _close(heads.adaptive_avg_pool(jnp.asarray(x2, jnp.float32), (3, 2)), want)


def test_simkd_projector_shapes_and_alignment_pool_the_larger_map():
  for f_s, f_t in [(_x((2, 8, 8, 6)), _x((2, 4, 4, 10))), (_x((2, 10, 6)), _x((2, 25, 10)))]:
    src, tgt = heads.SimKDProjector.align(f_s, f_t)
    assert src.shape[1:-1] == tgt.shape[1:-1] == min(f_s.shape[1:-1], f_t.shape[1:-1])
    v, y = _shapes(heads.SimKDProjector(10, factor=4), src.shape, train=True)
    assert v["params"]["conv1"]["kernel"].shape[-1] == 2                   # t / factor
    assert y.shape == tgt.shape
  # the pooled map is the pooling of the larger one
  f_s = _x((1, 6, 2))
  _close(heads.simkd_align(f_s, _x((1, 3, 5)))[0], np_adaptive_pool_1d(np.asarray(f_s), 3))
  src, tgt = heads.simkd_align(_x((2, 5, 3)), _x((2, 5, 4)))              # equal: both unchanged
  assert src.shape == (2, 5, 3) and tgt.shape == (2, 5, 4)


def test_camkd_align_pools_down_and_upsamples_bilinearly():
  assert heads.camkd_align(_x((2, 8, 8, 3)), (4, 4)).shape == (2, 4, 4, 3)
  ramp = jnp.asarray([0.0, 1.0]).reshape(1, 2, 1)
  # F.interpolate(size=4, align_corners=False) of [0, 1]: half-pixel centres, clamped edges
  _close(heads.camkd_align(ramp, (4,))[0, :, 0], [0.0, 0.25, 0.75, 1.0])
  assert heads.camkd_align(_x((1, 4, 4, 2)), (8, 8)).shape == (1, 8, 8, 2)


def test_srrl_connector_camkd_embed_and_crd_embed_shapes():
  for shape in ((3, 5, 4), (3, 4, 4, 4), (3, 4)):                        # maps and pooled vectors
    _, y = _shapes(heads.SRRLConnector(12), shape, train=True)
    assert y.shape == (*shape[:-1], 12)
  x = _x((3, 4))
  srrl = heads.SRRLConnector(12)
  assert float(jnp.min(srrl.apply(_init(srrl, x, train=False), x, train=False))) >= 0   # ReLU
  for convs in (False, True):
    v, y = _shapes(heads.CAMKDEmbed(12, convs=convs), (2, 4, 4, 6), train=True)
    assert y.shape == (2, 4, 4, 12)
    assert ("conv3" in v["params"]) == convs
    if convs:
      assert v["params"]["conv2"]["kernel"].shape == (3, 3, 3, 3)         # s / factor
  e = heads.Embed(16)
  x = _x((5, 3, 4))                                                        # flattened first
  y = e.apply(_init(e, x), x)
  assert y.shape == (5, 16)
  _close(jnp.linalg.norm(y, axis=-1), np.ones(5), rtol=1e-6)


def test_bad_input_ranks_are_clear_errors():
  with pytest.raises(ValueError, match="channels-last"):
    _shapes(heads.SimKDProjector(4), (2, 3), train=False)
  with pytest.raises(ValueError, match="channels-last"):
    _shapes(heads.CAMKDEmbed(4), (2, 3, 3, 3, 3), train=False)


# ------------------------------------------------------------------------------------------------
# Runs axis


@pytest.mark.parametrize("module,x,conv", [
    (heads.ConvReg(4, (3, 3), (6, 6)), (3, 3, 2), "conv"),                 # the transposed conv
    (heads.SimKDProjector(4), (5, 3), "conv1"),
])
def test_init_and_apply_vmap_over_runs(module, x, conv):
  R = 2
  xs = _x((R, 3, *x), seed=6)
  keys = jax.random.split(jax.random.PRNGKey(0), R)
  init = jax.jit(jax.vmap(lambda k, xi: module.init(k, xi, train=False)))
  v = init(keys, xs)
  k0 = v["params"][conv]["kernel"]
  assert not np.allclose(np.asarray(k0[0]), np.asarray(k0[1]))          # independent runs

  def step(vi, xi):
    return module.apply(vi, xi, train=True, mutable=["batch_stats"])

  y, new = jax.jit(jax.vmap(step))(v, xs)
  one_run = jax.jit(step)
  for r in range(R):
    vr = jax.tree_util.tree_map(lambda a: a[r], v)
    yr, nr = one_run(vr, xs[r])
    _close(y[r], yr, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(nr)):
      _close(a[r], b, rtol=1e-5, atol=1e-6)


def test_linear_heads_and_the_mtkd_rl_agent_run_their_matmuls_at_highest_precision():
  """On a GPU the default precision is TF32; the heads' losses assume float32 (the lowered
  program names the precision on every platform, so this checks it on a CPU too)."""
  from jkd.distill import mtkd_rl
  x = jnp.ones((2, 5), jnp.float32)
  lin = heads.torch_linear(5, 3)
  v = lin.init(jax.random.PRNGKey(0), x)
  emb = heads.Embed(4)
  ve = emb.init(jax.random.PRNGKey(0), x)
  agent = mtkd_rl.agent_init(jax.random.PRNGKey(0), (3, 3), hidden=4)
  for f, args in ((lin.apply, (v, x)), (emb.apply, (ve, x)),
                  (lambda a, s: mtkd_rl.agent_weights(a, s, (3, 3)), (agent, jnp.ones((2, 6))))):
    text = jax.jit(f).lower(*args).as_text()
    assert "dot" in text and "DEFAULT" not in text and "HIGHEST" in text, text[:400]
