"""Building blocks shared by every model family: the convolution layer (its formulations:
`jkd.models.conv`), PyTorch-style BatchNorm, Linear, activations and pooling.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jkd.images import gaf
from jkd.models.conv import (CONV_IMPLS, _conv, _conv_gemm, _tuple, conv_direct,  # noqa: F401
                             conv_factors, im2col, resolve_impl)

Array = jax.Array
Initializer = Callable[..., Array]

# The lab's WRN init: Normal(0, sqrt(2 / n)) with n = kernel elements x out_channels.
conv_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Conv/Linear init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> Initializer:
  """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv(nn.Module):
  """N-d convolution, channels-last, explicit symmetric padding, PyTorch semantics.

  Attributes:
    features: output channels.
    kernel_size: window per spatial axis (an int applies to every axis of the input).
    strides: stride per spatial axis.
    padding: zero padding on both sides of every spatial axis (PyTorch's `padding=`).
    feature_group_count: grouped convolution (the ResNeXt bottleneck).
    impl: 'gemm' (im2col + matmul, fast under vmap on CPU), 'lax' (lax.conv_general_dilated or
      the AVX-512 kernel), 'loop' (as 'lax', one convolution per run under vmap) or 'auto'.
    dtype: computation dtype (e.g. jnp.bfloat16); None computes in the input's dtype. Parameters
      are stored in float32 either way.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  use_bias: bool = False
  feature_group_count: int = 1
  kernel_init: Initializer = conv_fan_out_normal
  bias_init: Initializer | None = None
  impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nd = x.ndim - 2
    window = _tuple(self.kernel_size, nd)
    strides = _tuple(self.strides, nd)
    padding = [(p, p) for p in _tuple(self.padding, nd)]
    in_features = x.shape[-1]
    groups = self.feature_group_count
    if in_features % groups or self.features % groups:
      raise ValueError(f"Conv: channels in={in_features}, out={self.features} must divide groups={groups}")
    kernel = self.param("kernel", self.kernel_init, (*window, in_features // groups, self.features))
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if isinstance(x, gaf.GafFactors) and groups > 1:
      x = x.dense()
    impl = resolve_impl(self.impl, nd, groups)
    if isinstance(x, gaf.GafFactors):
      y = conv_factors(x, kernel, strides, padding)
    elif impl in ("lax", "loop") and groups == 1:
      y = conv_direct(x, kernel, tuple(strides), tuple(padding), impl == "loop")
    elif impl in ("lax", "loop"):      # grouped: XLA's own gradients
      y = _conv(x, kernel, strides, padding, groups=groups)
    elif impl == "gemm":
      y = _conv_gemm(x, kernel, window, strides, padding, groups)
    else:
      raise ValueError(f"Conv: impl must be one of {CONV_IMPLS}, got {self.impl!r}")
    if self.use_bias:
      fan_in = math.prod(window) * in_features // groups
      init = self.bias_init or torch_default_bias(fan_in)
      y = y + self.param("bias", init, (self.features,)).astype(y.dtype)
    return y


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last, updating running statistics exactly like PyTorch.

  Training normalises with the biased batch variance and updates
  `running = (1 - momentum) * running + momentum * batch`, using the *unbiased* variance for
  `running_var` (PyTorch's convention; Flax's own BatchNorm uses the biased one).
  Parameters `scale`/`bias`; statistics `mean`/`var` in the `batch_stats` collection.
  Statistics are computed in at least float32; the output has the input's dtype.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
    out_dtype = x.dtype
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1))
      n = math.prod(x.shape[:-1])
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - mean), axes)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
    else:
      mean, var = ra_mean.value, ra_var.value
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    return (x * inv + (bias - mean * inv)).astype(out_dtype)


class Linear(nn.Module):
  """PyTorch-style Linear: kernel `(in, out)` ~ U(+-1/sqrt(in)); bias zero unless `bias_init` given.

  `dtype` is the computation dtype (None: the input's); parameters stay float32. `precision`:
  the matmul's `jax.lax.Precision` (None: the default, TF32 passes on an NVIDIA GPU).
  """
  features: int
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = None
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", torch_default_kernel, (x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    if self.dtype is not None:
      x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    return jnp.dot(x, kernel, precision=self.precision) + bias


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.01),
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
}


def activation(name: str) -> Callable[[Array], Array]:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


def global_avg_pool(x: Array) -> Array:
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))




def check_input(x: Array, ndim: int, model: str) -> None:
  """Raise a clear error unless `x` is channels-last of rank `ndim + 2` (ndim 1 or 2)."""
  if ndim not in (1, 2):
    raise ValueError(f"{model}: ndim must be 1 (signals) or 2 (images), got {ndim}")
  if x.ndim != ndim + 2:
    layout = "(batch, length, channels)" if ndim == 1 else "(batch, height, width, channels)"
    raise ValueError(f"{model} built with ndim={ndim} expects input {layout}, got shape {x.shape}; "
                     f"create the model with ndim={x.ndim - 2} or reshape the input")
