"""The AVX-512 convolution kernel (jkd.models.cpu_conv) against direct numpy sums and XLA."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

import jkd.models
from jkd.models import cpu_conv, layers
from test_layers import conv_direct_and_xla, numpy_conv1d, numpy_conv2d

pytestmark = pytest.mark.skipif(not cpu_conv.available(),
                                reason="needs the AVX-512 kernel (x86-64 CPU with AVX-512, C compiler)")


@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (3, 1, 0),
                                               (5, 2, 2)])
@pytest.mark.parametrize("size", [(3, 3), (9, 7), (20, 18)])    # rows narrower than every tile
@pytest.mark.parametrize("out", [16, 32, 48, 64])                # 1, 2, 1 (x3) and 4 vectors
def test_kernel_2d_matches_direct_sum(kernel, stride, pad, size, out):
  rng = np.random.default_rng(out + size[1])
  x = rng.normal(size=(3, *size, 5)).astype(np.float32)
  w = rng.normal(size=(kernel, kernel, 5, out)).astype(np.float32)
  if min(size) + 2 * pad < kernel:
    pytest.skip("window larger than the padded input")
  got = jax.jit(lambda x, w: cpu_conv.conv(x, w, (stride, stride), [(pad, pad)] * 2))(x, w)
  np.testing.assert_allclose(got, numpy_conv2d(x, w, stride, pad), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3)])
@pytest.mark.parametrize("length", [13, 100])
def test_kernel_1d_matches_direct_sum(kernel, stride, pad, length):
  rng = np.random.default_rng(length)
  x = rng.normal(size=(4, length, 40)).astype(np.float32)
  w = rng.normal(size=(kernel, 40, 32)).astype(np.float32)
  got = jax.jit(lambda x, w: cpu_conv.conv(x, w, (stride,), [(pad, pad)]))(x, w)
  np.testing.assert_allclose(got, numpy_conv1d(x, w, stride, pad), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [2, 5, 7])
def test_kernel_gives_the_same_bits_on_any_number_of_threads(threads):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 16, 16, 16)).astype(np.float32)
  w = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
  conv = lambda t: jax.jit(lambda x, w: cpu_conv.conv(x, w, (1, 1), [(1, 1)] * 2, t))(x, w)
  one = np.asarray(conv(1))
  np.testing.assert_array_equal(np.asarray(conv(threads)), one)     # 7 > 5 images: 5 threads
  np.testing.assert_allclose(one, numpy_conv2d(x, w, 1, 1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("nd,kernel,stride,pad,size", [(1, 3, 1, 1, 12), (1, 3, 2, 1, 11),
                                                       (2, 3, 1, 1, 6), (2, 3, 2, 1, 7)])
@pytest.mark.parametrize("loop", [False, True])
def test_conv_direct_through_the_kernel_has_xlas_values_and_gradients(nd, kernel, stride, pad,
                                                                      size, loop):
  x, k, xla, ours = conv_direct_and_xla(nd, kernel, stride, pad, size, loop, 16, 32, seed=5)
  hlo = jax.jit(jax.grad(ours, (0, 1))).lower(x[0], k[0]).as_text()
  calls = lambda target: hlo.count(f"custom_call @{target}(")
  assert calls(cpu_conv.TARGET) == (2 if stride == 1 else 1)        # forward, and d/dx at stride 1
  assert calls(cpu_conv.GRAD_TARGET) == (1 if stride == 1 else 0)   # d/dkernel at stride 1
  for f in (lambda g: g, jax.vmap):
    args = (x, k) if f is jax.vmap else (x[0], k[0])
    np.testing.assert_allclose(f(ours)(*args), f(xla)(*args), rtol=1e-5, atol=1e-4)
    for a, b in zip(f(jax.grad(xla, (0, 1)))(*args), f(jax.grad(ours, (0, 1)))(*args)):
      np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("nd,size,cin,cout,pad", [(1, 13, 16, 16, 1), (1, 25, 40, 32, 1),
                                                  (1, 9, 5, 8, 0), (2, (6, 7), 16, 16, 1),
                                                  (2, (5, 5), 20, 24, 1), (2, (4, 9), 3, 8, 0)])
def test_kernel_grad_is_the_sum_over_positions_of_input_times_output_gradient(nd, size, cin, cout,
                                                                              pad):
  rng = np.random.default_rng(cin + cout)
  size = (size,) if nd == 1 else size
  window = (3,) * nd
  x = rng.normal(size=(3, *size, cin)).astype(np.float32)
  out = [s + 2 * pad - 2 for s in size]
  g = rng.normal(size=(3, *out, cout)).astype(np.float32)
  xp = np.pad(x, [(0, 0)] + [(pad, pad)] * nd + [(0, 0)])
  want = np.zeros((*window, cin, cout))
  for tap in np.ndindex(*window):                   # independent: a sum per tap over positions
    region = xp[(slice(None),) + tuple(slice(t, t + o) for t, o in zip(tap, out))]
    want[tap] = region.reshape(-1, cin).T @ g.reshape(-1, cout)
  got = jax.jit(lambda x, g: cpu_conv.kernel_grad(x, g, window, [(pad, pad)] * nd))(x, g)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_auto_picks_the_kernel_and_trains_like_gemm(monkeypatch):
  x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 24, 40)), jnp.float32)
  y = jnp.arange(4) % 3
  auto, gemm = (jkd.models.create("wrn10_1", num_classes=3, conv_impl=i) for i in ("auto", "gemm"))
  v = gemm.init(jax.random.PRNGKey(0), x, train=False)

  def grads(model):
    def loss(p):
      (logits, _), _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])
    return jax.jit(jax.value_and_grad(loss)), loss

  (fa, _), (fg, _) = grads(auto), grads(gemm)
  assert cpu_conv.TARGET in fa.lower(v["params"]).as_text()
  (la, ga), (lg, gg) = fa(v["params"]), fg(v["params"])
  np.testing.assert_allclose(la, lg, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gg)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  assert layers.resolve_impl("auto", 1) == "loop"
  assert layers.resolve_impl("auto", 1, groups=4) == "gemm"     # grouped: the GEMM, as before
  monkeypatch.setenv("JKD_CPU_CONV", "0")                       # switched off: XLA's, as before
  assert layers.resolve_impl("auto", 1) == "gemm" and layers.resolve_impl("auto", 2) == "loop"
  assert cpu_conv.TARGET not in grads(auto)[0].lower(v["params"]).as_text()
