"""A faster float32 convolution on x86-64 CPUs with AVX-512: `jkd.models._cpuconv` as an XLA FFI call.

XLA:CPU's convolution gathers image patches and multiplies them by the kernel (Eigen). The C
kernel instead keeps tiles of output pixels x 16-channel vectors in registers and broadcasts each
input value against the weights. On the 2-core CPU (`python -m jkd.bench cpu-conv`: batch 128,
one core), 3 x 3 16 -> 16 channels at 64 x 64 took 27 ms against XLA's 50 ms, the GAF image
teacher's layers 1.47x less time (2.07x on both cores); 1-D layers 1.0-2.2x.

`conv(x, kernel, strides, padding)` computes a convolution and `kernel_grad(x, g, window,
padding)` the kernel gradient of a stride-1 one with 3-wide windows (on one core, 1-D layers of the
train step: 0.26 / 0.40 / 0.95 ms against XLA's 1.68 / 0.85 / 1.18 ms). Callers check
`supports(...)` / `supports_kernel_grad(...)` (both include `available()`), else use XLA's
convolutions; results equal XLA's up to float32 summation order. `jkd.models.layers.conv_direct` uses both for the forward pass and
the gradients. `JKD_CPU_CONV=0` in the environment switches them off.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "jkd_conv"
GRAD_TARGET = "jkd_conv_kernel_grad"


@functools.cache
def _module():
  try:
    from jkd.models import _cpuconv
  except ImportError:                           # built without a C compiler
    return None
  return _cpuconv if _cpuconv.AVX512 else None


@functools.cache
def _register() -> bool:
  module = _module()
  if module is None or not hasattr(jax, "ffi"):           # jax.ffi: jax >= 0.4.38
    return False
  jax.ffi.register_ffi_target(TARGET, module.handler(), platform="cpu")
  jax.ffi.register_ffi_target(GRAD_TARGET, module.grad_handler(), platform="cpu")
  return True


def available() -> bool:
  """The kernel is built, the CPU has AVX-512, XLA runs on the CPU, and JKD_CPU_CONV is not 0."""
  return (os.environ.get("JKD_CPU_CONV", "1") != "0" and jax.default_backend() == "cpu"
          and _register())


def supports(x, kernel, padding: Sequence[tuple[int, int]]) -> bool:
  """`conv` runs here (`available()`) and computes this: float32, 2-D spatial (NHWC) or 1-D (NHC),
  output channels a multiple of 16, symmetric padding (no dilation or groups: `conv` has no such
  arguments)."""
  return (x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and x.ndim in (3, 4)
          and kernel.shape[-1] % 16 == 0 and _symmetric(padding) and available())


def _symmetric(padding: Sequence[tuple[int, int]]) -> bool:
  return all(lo == hi for lo, hi in padding)


def _pads(padding: Sequence[tuple[int, int]]) -> tuple[np.int64, np.int64]:
  """(pad_h, pad_w) attributes of an image call; the kernel registered with XLA."""
  if not _register():
    raise RuntimeError("cpu_conv: the AVX-512 kernel is not available here (see available())")
  if not _symmetric(padding):
    raise ValueError(f"cpu_conv: padding must be symmetric, got {padding}")
  return np.int64(padding[0][0]), np.int64(padding[1][0])


def threads() -> int:
  """Threads per call: the cores shared among the local devices (`jkd.main` gives every run a CPU
  device, and their programs run at once)."""
  return max(1, (os.cpu_count() or 1) // max(1, jax.local_device_count()))


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
         padding: Sequence[tuple[int, int]], num_threads: int | None = None) -> jax.Array:
  """Channels-last convolution, kernel (*window, in, out), symmetric zero `padding`; 1-D inputs
  go through as images of height 1. `num_threads` split the images (default: `threads()`, fewer
  for small convolutions). The caller checks `supports()`."""
  if x.ndim == 3:
    y = conv(x[:, None], kernel[None], (1, *strides), [(0, 0), *padding], num_threads)
    return y[:, 0]
  ph, pw = _pads(padding)
  n, h, w, _ = x.shape
  kh, kw, _, o = kernel.shape
  ho, wo = (h + 2 * ph - kh) // strides[0] + 1, (w + 2 * pw - kw) // strides[1] + 1
  if num_threads is None:     # a thread per ~50 MFLOP at most: starting one costs ~0.1 ms
    work = 2 * n * ho * wo * kh * kw * x.shape[-1] * o
    num_threads = max(1, min(threads(), work // 50_000_000))
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((n, ho, wo, o), jnp.float32),
                          vmap_method="sequential")
  return call(x, kernel, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_h=ph, pad_w=pw, threads=np.int64(num_threads))


def supports_kernel_grad(x, g, window: Sequence[int], strides: Sequence[int],
                         padding: Sequence[tuple[int, int]]) -> bool:
  """`kernel_grad` runs here (`available()`) and computes this: float32, stride 1, a window 3 wide
  (along the last spatial axis), output channels a multiple of 8, symmetric padding."""
  return (x.dtype == jnp.float32 and g.dtype == jnp.float32 and x.ndim in (3, 4)
          and window[-1] == 3 and all(s == 1 for s in strides) and g.shape[-1] % 8 == 0
          and _symmetric(padding) and available())


def kernel_grad(x: jax.Array, g: jax.Array, window: Sequence[int],
                padding: Sequence[tuple[int, int]]) -> jax.Array:
  """The kernel gradient of a stride-1 convolution: dk[*tap, c, o] = sum over samples and output
  positions of pad(x)[n, pos + tap, c] * g[n, pos, o]; `window` (*, 3), symmetric `padding`.
  One thread; the caller checks `supports_kernel_grad()`."""
  if x.ndim == 3:
    return kernel_grad(x[:, None], g[:, None], (1, *window), [(0, 0), *padding])[0]
  ph, pw = _pads(padding)
  out = jax.ShapeDtypeStruct((*window, x.shape[-1], g.shape[-1]), jnp.float32)
  call = jax.ffi.ffi_call(GRAD_TARGET, out, vmap_method="sequential")
  return call(x, g, pad_h=ph, pad_w=pw)
