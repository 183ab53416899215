"""Conv, BatchNorm and Linear against direct numpy computations."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jkd.models import conv, layers


def numpy_conv1d(x, w, stride, pad, groups=1):
  """Direct PyTorch-semantics conv: x (B, L, C), w (k, C/groups, O)."""
  b, length, c = x.shape
  k, cg, o = w.shape
  xp = np.pad(x, [(0, 0), (pad, pad), (0, 0)])
  out_len = (length + 2 * pad - k) // stride + 1
  og = o // groups
  y = np.zeros((b, out_len, o))
  for t in range(out_len):
    for g in range(groups):
      seg = xp[:, t * stride:t * stride + k, g * cg:(g + 1) * cg]          # (B, k, cg)
      y[:, t, g * og:(g + 1) * og] = np.einsum("bkc,kco->bo", seg, w[:, :, g * og:(g + 1) * og])
  return y


def numpy_conv2d(x, w, stride, pad):
  b, h, wd, c = x.shape
  kh, kw, _, o = w.shape
  xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  y = np.zeros((b, oh, ow, o))
  for i in range(oh):
    for j in range(ow):
      seg = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
      y[:, i, j] = np.einsum("bhwc,hwco->bo", seg, w)
  return y


@pytest.mark.parametrize("impl", ["gemm", "lax", "loop"])
@pytest.mark.parametrize("kernel,stride,pad,groups", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1),
                                                      (3, 1, 1, 4), (7, 2, 3, 1)])
@pytest.mark.parametrize("length", [13, 14])    # padded length not / a multiple of the stride
def test_conv1d_matches_direct_sum(impl, kernel, stride, pad, groups, length):
  x = np.random.default_rng(0).normal(size=(3, length, 8)).astype(np.float32)
  conv = layers.Conv(12, kernel, stride, pad, feature_group_count=groups, impl=impl)
  v = conv.init(jax.random.PRNGKey(0), x)
  w = np.asarray(v["params"]["kernel"])
  assert w.shape == (kernel, 8 // groups, 12)
  np.testing.assert_allclose(conv.apply(v, x), numpy_conv1d(x, w, stride, pad, groups), atol=1e-5)


@pytest.mark.parametrize("impl", ["gemm", "lax", "loop"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 6), (8, 6)])
def test_conv2d_matches_direct_sum(impl, stride, size):
  x = np.random.default_rng(1).normal(size=(2, *size, 5)).astype(np.float32)
  conv = layers.Conv(4, 3, stride, 1, impl=impl)
  v = conv.init(jax.random.PRNGKey(0), x)
  np.testing.assert_allclose(conv.apply(v, x), numpy_conv2d(x, np.asarray(v["params"]["kernel"]),
                                                            stride, 1), atol=1e-5)


def test_conv_gemm_under_vmap_equals_per_run_application():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 10, 6)), jnp.float32)  # runs axis 3
  conv = layers.Conv(5, 3, 2, 1)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  vs = jax.vmap(lambda k, xi: conv.init(k, xi))(keys, x)
  stacked = jax.vmap(conv.apply)(vs, x)
  for r in range(3):
    one = conv.apply(jax.tree.map(lambda a: a[r], vs), x[r])
    np.testing.assert_allclose(stacked[r], one, atol=1e-6)


def conv_direct_and_xla(nd, kernel, stride, pad, size, loop, cin=4, cout=5, seed=3):
  """Random x (runs 2, batch 3, *size, cin) and kernels (2, *window, cin, cout), and two losses,
  sum(sin(convolution)), through XLA's convolution and through `layers.conv_direct`."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(2, 3) + (size,) * nd + (cin,)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2,) + (kernel,) * nd + (cin, cout)), jnp.float32)
  strides, padding = (stride,) * nd, ((pad, pad),) * nd
  xla = lambda x, k: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=conv._SPECS[nd])))
  ours = lambda x, k: jnp.sum(jnp.sin(layers.conv_direct(x, k, strides, padding, loop)))
  return x, k, xla, ours


@pytest.mark.parametrize("nd,kernel,stride,pad,size", [(1, 3, 1, 1, 12), (1, 3, 2, 1, 11),
                                                       (1, 1, 2, 0, 10), (1, 5, 2, 2, 9),
                                                       (2, 3, 2, 1, 7), (2, 3, 1, 0, 6)])
@pytest.mark.parametrize("loop", [False, True])
def test_conv_direct_gradients_equal_xlas_also_vmapped(nd, kernel, stride, pad, size, loop):
  x, k, xla, ours = conv_direct_and_xla(nd, kernel, stride, pad, size, loop)
  for f in (lambda g: g, jax.vmap):           # one run, and runs vmapped (a per-run loop if `loop`)
    args = (x, k) if f is jax.vmap else (x[0], k[0])
    want, got = f(jax.grad(xla, (0, 1)))(*args), f(jax.grad(ours, (0, 1)))(*args)
    for a, b in zip(want, got):
      np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-5)


def test_wrn_conv_init_std_is_sqrt_2_over_kernel_times_out():
  conv = layers.Conv(64, 3)
  w = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 128)))["params"]["kernel"]
  assert abs(float(jnp.std(w)) - np.sqrt(2.0 / (3 * 64))) < 0.01 * np.sqrt(2.0 / (3 * 64)) * 5


def test_batchnorm_train_uses_biased_var_and_updates_running_stats_like_pytorch():
  x = np.random.default_rng(3).normal(2.0, 3.0, size=(4, 5, 3)).astype(np.float32)
  bn = layers.BatchNorm()
  v = bn.init(jax.random.PRNGKey(0), x, train=True)
  y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
  flat = x.reshape(-1, 3)
  mean, var_b, var_u = flat.mean(0), flat.var(0), flat.var(0, ddof=1)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var_b + 1e-5), atol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * var_u, rtol=1e-5)


def test_batchnorm_eval_uses_running_stats_scale_and_bias():
  bn = layers.BatchNorm()
  x = np.random.default_rng(4).normal(size=(2, 3, 2)).astype(np.float32)
  v = {"params": {"scale": jnp.array([2.0, 0.5]), "bias": jnp.array([1.0, -1.0])},
       "batch_stats": {"mean": jnp.array([0.5, -0.5]), "var": jnp.array([4.0, 0.25])}}
  y = bn.apply(v, x, train=False)
  expect = (x - [0.5, -0.5]) / np.sqrt(np.array([4.0, 0.25]) + 1e-5) * [2.0, 0.5] + [1.0, -1.0]
  np.testing.assert_allclose(y, expect, atol=1e-5)


def test_linear_init_is_pytorch_default_with_zero_bias():
  lin = layers.Linear(1000)
  v = lin.init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))["params"]
  assert v["kernel"].shape == (64, 1000)
  bound = 1 / np.sqrt(64)
  assert float(jnp.max(jnp.abs(v["kernel"]))) <= bound
  assert float(jnp.max(jnp.abs(v["kernel"]))) > 0.95 * bound
  assert float(jnp.abs(v["bias"]).max()) == 0.0


def test_unknown_activation_and_conv_impl_are_clear_errors():
  with pytest.raises(ValueError, match="unknown activation 'relu6'"):
    layers.activation("relu6")
  with pytest.raises(ValueError, match="impl must be"):
    layers.Conv(2, 3, impl="fft").init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 2)))


# ----------------------------------------------------------------------------- GAF factors

@pytest.mark.parametrize("method", ["summation", "difference"])
@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3),
                                               (3, 1, 0)])
def test_conv_of_gaf_factors_equals_conv_of_the_images(method, kernel, stride, pad):
  from jkd.images import gaf
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 30, 5)), jnp.float32)
  factors = gaf.gaf_factors(x, 13, method=method)
  images = gaf.gramian_angular_field(x, 13, method=method)
  conv = layers.Conv(6, kernel, stride, pad, impl="loop")
  v = conv.init(jax.random.PRNGKey(0), images)
  np.testing.assert_allclose(conv.apply(v, factors), conv.apply(v, images), atol=1e-5)
  w = v["params"]["kernel"]
  by_sample = layers.conv_factors(factors, w, (stride,) * 2, [(pad, pad)] * 2, cache_bytes=1)
  np.testing.assert_allclose(by_sample, conv.apply(v, images), atol=1e-5)   # 1 sample per group
  grad = lambda inp: jax.grad(lambda v: jnp.sum(jnp.sin(conv.apply(v, inp))))(v)["params"]["kernel"]
  np.testing.assert_allclose(grad(factors), grad(images), atol=1e-4)


def test_conv_of_gaf_factors_vmapped_over_runs_equals_each_run():
  from jkd.images import gaf
  x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 2, 20, 4)), jnp.float32)   # 3 runs
  conv = layers.Conv(5, 3, 2, 1, impl="loop")
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  vs = jax.vmap(lambda k, xi: conv.init(k, gaf.gramian_angular_field(xi, 10)))(keys, x)
  run = lambda v, xi: conv.apply(v, gaf.gaf_factors(xi, 10))
  stacked = jax.vmap(run)(vs, x)
  for r in range(3):
    one = conv.apply(jax.tree.map(lambda a: a[r], vs), gaf.gramian_angular_field(x[r], 10))
    np.testing.assert_allclose(stacked[r], one, atol=1e-5)
