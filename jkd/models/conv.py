"""The convolution of every model, in three formulations with identical parameters (kernel
`(*window, in, out)`), and its gradients:

* ``impl='gemm'`` (default): im2col — the kernel taps are gathered as strided slices of the padded
  input, concatenated along channels, and contracted with one matrix multiply. Under ``jax.vmap``
  over runs this stays a batched GEMM, which XLA:CPU runs at full speed.
* ``impl='lax'``: ``lax.conv_general_dilated``, with gradients spelled out as canonical
  convolutions (`conv_direct`: XLA's own are 7-40x slower inside a `lax.scan` on XLA:CPU).
  Vmapping over runs turns its weights into a grouped convolution, which XLA:CPU executes slowly.
* ``impl='loop'``: as 'lax', but a vmap over runs runs one convolution per run (unrolled).
* ``impl='auto'`` (`jkd.models.create`'s default): 'loop' where `jkd.models.cpu_conv`'s AVX-512
  kernel computes the convolution and its gradients (XLA:CPU on an AVX-512 CPU; not grouped
  convolutions), else 'gemm' in 1-D and 'loop' in 2-D.

In 'lax' and 'loop', the forward convolution and, at stride 1, its input and (3-wide windows)
kernel gradients go through `jkd.models.cpu_conv` where it is available (float32, no groups, output
channels a multiple of 16).

Which is fastest depends on how many runs share a device (``python -m jkd.bench conv`` and
``train-step``); on CPU `jkd.main` gives every run its own device (`jkd.engine.parallel`). Measured
train-step, WRN16-1, 9 runs, ms per step of all runs (README, Benchmarks):

  ======================  ======  ======  ======
  device                  gemm    lax     loop
  ======================  ======  ======  ======
  H100, 1-D 100 x 40       1.84    11.0     5.5
  H100, 2-D GAF 64 x 64     72.8   101.4    41.8
  2-core CPU, 2-D (b=32)     -     3480    2970
  ======================  ======  ======  ======

hence 'gemm' for 1-D and 'loop' for 2-D without the AVX-512 kernel. With it, on the 2-core CPU
(9 runs, batch 128, `train-step`), 1-D 'loop' took 148 ms per step against 196-200 ms for 'gemm'
(170 ms with the kernel in the forward pass and input gradient only).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import custom_batching

from jkd.images import gaf
from jkd.models import cpu_conv

Array = jax.Array
CONV_IMPLS = ("auto", "gemm", "lax", "loop")


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
  return (v,) * n if isinstance(v, int) else tuple(v)


def im2col(x: Array, window: Sequence[int], strides: Sequence[int],
           padding: Sequence[tuple[int, int]]) -> Array:
  """Patches of a channels-last input `(B, *spatial, C)` -> `(B, *out_spatial, prod(window) * C)`.

  The last axis is ordered tap-major (all channels of tap 0, then tap 1, ...), matching a kernel
  `(*window, C, O)` reshaped to `(prod(window) * C, O)`.
  """
  nd = len(window)
  spatial = [x.shape[1 + i] + sum(padding[i]) for i in range(nd)]
  out = [(spatial[i] - window[i]) // strides[i] + 1 for i in range(nd)]
  if all(spatial[i] % strides[i] == 0 for i in range(nd)):
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    taps = [jax.lax.slice(x, (0, *o, 0),
                          (x.shape[0], *(o[i] + (out[i] - 1) * strides[i] + 1 for i in range(nd)),
                           x.shape[-1]), (1, *strides, 1)) for o in _offsets(window)]
  else:
    # A stride that does not divide the padded length: XLA:GPU's Triton GEMM fusion aborts on
    # such strided slices (jax 0.11.2, "subdim_size_accumulator == dim_size"). Instead pad each
    # axis to a multiple of its stride s, split it into (blocks, s), and take tap offset o = q*s + r
    # as blocks q..q+out at phase r. (Not used throughout: 8% slower on CPU.)
    blocks = [max(-(-spatial[i] // strides[i]), (window[i] - 1) // strides[i] + out[i])
              for i in range(nd)]
    pads = [(lo, hi + blocks[i] * strides[i] - spatial[i]) for i, (lo, hi) in enumerate(padding)]
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    x = x.reshape(x.shape[0], *(d for i in range(nd) for d in (blocks[i], strides[i])),
                  x.shape[-1])
    taps = []
    for o in _offsets(window):
      index = [slice(None)]
      for i in range(nd):
        q, r = divmod(o[i], strides[i])
        index += [slice(q, q + out[i]), r]
      taps.append(x[tuple(index)])
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _offsets(window: Sequence[int]) -> list[tuple[int, ...]]:
  grids = [()]
  for w in window:
    grids = [g + (i,) for g in grids for i in range(w)]
  return grids


def resolve_impl(impl: str, nd: int, groups: int = 1) -> str:
  """'auto' -> 'loop' where the AVX-512 kernel runs (jkd.models.cpu_conv; not for grouped
  convolutions), else 'gemm' (1-D) or 'loop' (2-D); any other impl as it is."""
  if impl != "auto":
    return impl
  return "loop" if nd == 2 or (groups == 1 and cpu_conv.available()) else "gemm"


def conv_factors(x: gaf.GafFactors, kernel: Array, strides: Sequence[int],
                 padding: Sequence[tuple[int, int]], cache_bytes: int = 1 << 20) -> Array:
  """Convolution of GAF images given as factors, image[n, i, j, c] = Σ_r rows[n,i,r,c] cols[n,j,r,c]:

    out[n,i,j,o] = Σ_{di,r,c} rows[n, s i + di, r, c] · P[n, di, r, c, j, o],
    P[n,di,r,c,j,o] = Σ_dj cols[n, s j + dj, r, c] · kernel[di, dj, c, o]

  (zero padding pads the factors): one GEMM per sample over (di, r, c) = kh·2·C instead of a
  convolution over kh·kw·C, and the S x S x C images are never built. On a CPU the samples go
  through a loop in groups whose P fits in `cache_bytes` (~L2): on the 2-core CPU, GASF
  64 x 64 x 40 -> 16 channels, batch 128, 75 ms one sample at a time against 158 ms for the whole
  batch at once. With the GAF itself (`python -m jkd.bench gaf`, `stem_factors_ms`): 92 ms against
  216 ms for GAF images + `lax` convolution.
  """
  (b, _, rank, c), (kh, kw, _, o) = x.rows.shape, kernel.shape
  wo = (x.cols.shape[1] + sum(padding[1]) - kw) // strides[1] + 1
  p_bytes = kh * rank * c * wo * o * 4
  on_cpu = jax.default_backend() == "cpu"
  group = _largest_divisor(b, max(1, cache_bytes // p_bytes)) if on_cpu else b
  if group == b:
    return _conv_factors(x.rows, x.cols, kernel, strides, padding)
  split = lambda a: a.reshape(b // group, group, *a.shape[1:])
  out = jax.lax.map(lambda rc: _conv_factors(*rc, kernel, strides, padding),
                    (split(x.rows), split(x.cols)))
  return out.reshape(b, *out.shape[2:])


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _conv_factors(rows, cols, kernel, strides, padding):
  (kh, kw), (sh, sw), (ph, pw) = kernel.shape[:2], strides, padding
  b, _, rank, c = rows.shape
  rows = im2col(rows.reshape(b, -1, rank * c), (kh,), (sh,), [ph])      # (B, Ho, kh·R·C)
  cols = im2col(cols.reshape(b, -1, rank * c), (kw,), (sw,), [pw])      # (B, Wo, kw·R·C)
  wo, o = cols.shape[1], kernel.shape[-1]
  cols = cols.reshape(b, wo, kw, rank, c).transpose(0, 2, 3, 4, 1)     # (B, kw, R, C, Wo)
  p = sum(cols[:, None, dj, :, :, :, None] * kernel[None, :, dj, None, :, None, :]
          for dj in range(kw))                                          # (B, kh, R, C, Wo, O)
  p = p.reshape(b, kh * rank * c, wo * o)
  out = jax.lax.dot_general(rows, p, (((2,), (1,)), ((0,), (0,))))     # (B, Ho, Wo·O)
  return out.reshape(b, rows.shape[1], wo, o)


_SPECS = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC")}


def _conv(x, kernel, strides, padding, lhs_dilation=None, rhs_dilation=None, groups=1):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, lhs_dilation, rhs_dilation,
                                      dimension_numbers=_SPECS[x.ndim - 2],
                                      feature_group_count=groups)


def per_run(f):
  """`f` whose vmap runs `f` once per mapped element (unrolled) instead of batching it."""
  f = custom_batching.custom_vmap(f)

  @f.def_vmap
  def rule(axis_size, in_batched, *args):
    args = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, b in zip(args, in_batched)]
    outs = [f(*[a[i] for a in args]) for i in range(axis_size)]
    return jnp.stack(outs), True
  return f


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_direct(x, kernel, strides, padding, loop=False):
  """Convolution (channels-last, HWIO kernel) whose gradients are plain canonical convolutions.

  XLA's own transposes of a convolution use non-canonical dimension labels which XLA:CPU runs
  7-40x (1-D) and ~100x (2-D) slower inside a loop such as the epoch's `lax.scan` (measured: one
  WRN16-1 train step 355 ms vs 29 ms); here they are spelled out with explicit transposes. With `loop`, vmapping runs one convolution per mapped element instead of a grouped
  convolution.
  """
  return _maybe_per_run(lambda x, k: _conv_fast(x, k, strides, padding), loop)(x, kernel)


def _conv_fast(x, kernel, strides, padding):
  """`_conv` without dilation or groups: on an AVX-512 CPU, `jkd.models.cpu_conv`'s kernel."""
  if cpu_conv.supports(x, kernel, padding):
    return cpu_conv.conv(x, kernel, strides, padding)
  return _conv(x, kernel, strides, padding)


def _maybe_per_run(f, loop):
  return per_run(f) if loop else f


def _direct_fwd(x, kernel, strides, padding, loop):
  return conv_direct(x, kernel, strides, padding, loop), (x, kernel)


def _direct_bwd(strides, padding, loop, res, g):
  x, kernel = res
  nd = x.ndim - 2
  sizes, window = x.shape[1:-1], kernel.shape[:nd]
  outs = g.shape[1:-1]
  # d/dx: the stride-dilated output gradient convolved with the flipped, in/out-swapped kernel.
  pad_x = [(k - 1 - lo, n - 1 - (o - 1) * s + lo)
           for k, (lo, _), n, o, s in zip(window, padding, sizes, outs, strides)]
  k_t = jnp.flip(kernel, tuple(range(nd))).swapaxes(-1, -2)
  if all(s == 1 for s in strides):
    dx = _maybe_per_run(lambda g, k: _conv_fast(g, k, strides, pad_x), loop)(g, k_t)
  else:
    dx = _maybe_per_run(lambda g, k: _conv(g, k, (1,) * nd, pad_x, lhs_dilation=strides), loop)(
        g, k_t)
  if cpu_conv.supports_kernel_grad(x, g, window, strides, padding):
    dk = _maybe_per_run(lambda x, g: cpu_conv.kernel_grad(x, g, window, padding), loop)(x, g)
    return dx, dk
  # d/dkernel: channels as batch, batch as features, the output gradient as a dilated window.
  pad_k = [(lo, k + (o - 1) * s - n - lo)
           for k, (lo, _), n, o, s in zip(window, padding, sizes, outs, strides)]
  perm = (nd + 1, *range(1, nd + 1), 0)
  dk = _maybe_per_run(lambda x, g: _conv(x, g, (1,) * nd, pad_k, rhs_dilation=strides), loop)(
      x.transpose(perm), jnp.moveaxis(g, 0, -2))
  return dx, jnp.moveaxis(dk, 0, -2)


conv_direct.defvjp(_direct_fwd, _direct_bwd)


def _conv_gemm(x, kernel, window, strides, padding, groups):
  patches = im2col(x, window, strides, padding)              # (B, *out, taps * C)
  taps = math.prod(window)
  cin, cout = kernel.shape[-2], kernel.shape[-1]
  if groups == 1:
    # One 2-D GEMM over (batch x positions): measurably faster on XLA:CPU than a rank-3 dot.
    y = jnp.dot(patches.reshape(-1, taps * cin), kernel.reshape(taps * cin, cout))
    return y.reshape(*patches.shape[:-1], cout)
  # Grouped: split channels into groups inside every tap, contract per group.
  lead = patches.shape[:-1]
  p = patches.reshape(*lead, taps, groups, cin).swapaxes(-2, -3)       # (..., G, taps, cin)
  p = p.reshape(*lead, groups, taps * cin)
  k = kernel.reshape(taps, cin, groups, cout // groups)                 # (taps, cin, G, og)
  k = k.transpose(2, 0, 1, 3).reshape(groups, taps * cin, cout // groups)
  y = jnp.einsum("...gk,gko->...go", p, k)
  return y.reshape(*lead, cout)
