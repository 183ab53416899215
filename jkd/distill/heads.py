"""Trainable heads of the feature-distillation methods (FitNet, SimKD, SRRL, CRD, CA-MKD).

Flax linen modules on channels-last maps: 1-D ``(B, L, C)`` or 2-D ``(B, H, W, C)``, decided by the
input's rank. Each follows its authors' PyTorch module, with jkd's PyTorch-style layers
(`jkd.models.layers`: Conv, BatchNorm with eps 1e-5 / momentum 0.1, Linear); modules with
BatchNorm take ``train`` and keep running statistics in ``batch_stats``. Convolutions get
PyTorch's default init (``U(±1/sqrt(fan_in))`` for kernel and bias) unless the source sets one.

Sources (GitHub): RepDistiller (HobbitLong/RepDistiller) ``models/util.py: ConvReg`` and
``crd/criterion.py: Embed``; SimKD (DefangChen/SimKD) ``models/util.py: SimKD``; SRRL
(jingyang2017/KD_SRRL) ``distiller_zoo/AIN.py: transfer_conv``; CA-MKD (Rorozhl/CA-MKD)
``models/util.py: Embed, CalWeight``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jkd.models import layers

Array = jax.Array


# The linear heads' matmuls run at full float32 precision: on an NVIDIA GPU the default is TF32
# (a 10-bit mantissa), which the losses on their outputs (cosines, contrastive logits, NCE
# scores, log-sums) do not assume: their authors' PyTorch code runs these in float32.
HIGHEST = jax.lax.Precision.HIGHEST
_SPECS = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC")}


def _check_map(x: Array, module: str) -> int:
  """The number of spatial axes (1 or 2) of a channels-last map, or a clear error."""
  if x.ndim not in (3, 4):
    raise ValueError(f"{module} expects a channels-last map (batch, length, channels) or "
                     f"(batch, height, width, channels), got shape {x.shape}")
  return x.ndim - 2


# --------------------------------------------------------------------------------------------------
# Spatial alignment


def _pool_matrix(n: int, out: int) -> np.ndarray:
  """(out, n) averaging weights of PyTorch's adaptive average pooling along one axis."""
  m = np.zeros((out, n), np.float32)
  for i in range(out):
    lo, hi = (i * n) // out, -(-((i + 1) * n) // out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x: Array, spatial: Sequence[int]) -> Array:
  """`F.adaptive_avg_pool1d/2d` of a channels-last map to `spatial`: output cell i of an axis of
  length n averages input cells ``floor(i n / out) .. ceil((i + 1) n / out) − 1``."""
  spatial = tuple(spatial)
  if len(spatial) != x.ndim - 2:
    raise ValueError(f"adaptive_avg_pool: target size {spatial} does not match the map {x.shape}")
  for axis, out in enumerate(spatial, start=1):
    n = x.shape[axis]
    if n == out:
      continue
    if out < 1:
      raise ValueError(f"adaptive_avg_pool: target size {spatial} must be positive")
    m = jnp.asarray(_pool_matrix(n, out))
    y = jnp.matmul(m, jnp.moveaxis(x, axis, -2), precision=jax.lax.Precision.HIGHEST)
    x = jnp.moveaxis(y, -2, axis)
  return x


def simkd_align(f_s: Array, f_t: Array) -> tuple[Array, Array]:
  """SimKD's spatial alignment: whichever map is larger is adaptive-average-pooled to the other's
  size. Returns ``(source, target)``.

  As DefangChen/SimKD `SimKD.forward`: the student map is pooled if its first spatial axis is
  larger than the teacher's, else the teacher map is (to the student's size; a no-op when equal).
  The authors pool to a square (t_H, t_H); here to the other map's full spatial shape.
  """
  if f_s.ndim != f_t.ndim:
    raise ValueError(f"simkd_align: student map {f_s.shape} and teacher map {f_t.shape} must have "
                     "the same rank")
  if f_s.shape[1] > f_t.shape[1]:
    return adaptive_avg_pool(f_s, f_t.shape[1:-1]), f_t
  return f_s, adaptive_avg_pool(f_t, f_s.shape[1:-1])


def camkd_align(f_s: Array, t_spatial: Sequence[int], pool: bool | None = None) -> Array:
  """CA-MKD's alignment of the student map to teacher k's size (`CalWeight.forward`):
  adaptive average pooling if the student's first spatial axis is at least the teacher's, else
  (bi)linear upsampling (`F.interpolate(mode='bilinear')`, half-pixel centres, edges clamped).
  `pool` decides the branch when given (the authors decide it on the ORIGINAL student map's
  size even when they align an already aligned map; `jkd.distill.camkd.align`)."""
  t_spatial = tuple(t_spatial)
  if len(t_spatial) != f_s.ndim - 2:
    raise ValueError(f"camkd_align: teacher size {t_spatial} does not match the map {f_s.shape}")
  if f_s.shape[1] >= t_spatial[0] if pool is None else pool:
    return adaptive_avg_pool(f_s, t_spatial)
  return jax.image.resize(f_s, (f_s.shape[0], *t_spatial, f_s.shape[-1]), method="linear",
                          antialias=False)


# --------------------------------------------------------------------------------------------------
# FitNet regressor


class ConvRegSpec(NamedTuple):
  """The regressor's convolution: kind 'conv' or 'transpose', window, stride, padding per axis."""
  kind: str
  kernel: tuple[int, ...]
  strides: tuple[int, ...]
  padding: tuple[int, ...]


def conv_reg_spec(s_spatial: Sequence[int], t_spatial: Sequence[int]) -> ConvRegSpec:
  """RepDistiller `ConvReg`'s choice of convolution from the student and teacher map sizes.

  In the authors' order: s = 2·t → 3-wide, stride 2, pad 1; 2·s = t → transposed 4-wide, stride 2,
  pad 1; s ≥ t → a (1 + s − t)-wide valid convolution; anything else raises ValueError. The authors
  test the height only (square maps); here every spatial axis must pass the same test.
  """
  s, t = tuple(int(v) for v in s_spatial), tuple(int(v) for v in t_spatial)
  if len(s) != len(t) or len(s) not in (1, 2):
    raise ValueError(f"ConvReg: student size {s} and teacher size {t} must both be 1-D or 2-D")
  nd = len(s)
  if all(a == 2 * b for a, b in zip(s, t)):
    return ConvRegSpec("conv", (3,) * nd, (2,) * nd, (1,) * nd)
  if all(2 * a == b for a, b in zip(s, t)):
    return ConvRegSpec("transpose", (4,) * nd, (2,) * nd, (1,) * nd)
  if all(a >= b for a, b in zip(s, t)):
    return ConvRegSpec("conv", tuple(1 + a - b for a, b in zip(s, t)), (1,) * nd, (0,) * nd)
  raise ValueError(f"ConvReg: no regressor from a student map of size {s} to a teacher map of size "
                   f"{t}; the teacher's must be half, twice, or at most the student's on every axis")


class ConvTranspose(nn.Module):
  """PyTorch `ConvTranspose1d/2d` (channels-last, bias, no output padding, no groups).

  Kernel ``(*window, in, out)`` with ``y[s·i + k − p] += x[i] · W[k]``, computed as a convolution
  of the stride-dilated input with the flipped kernel. Init as PyTorch's: kernel and bias
  ``U(±1/sqrt(out · prod(window)))`` (PyTorch's fan-in of a transposed weight is its dim 1, the
  output channels).
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nd = _check_map(x, "ConvTranspose")
    k, s, p = self.kernel_size, self.strides, self.padding
    if p > k - 1:
      raise ValueError(f"ConvTranspose: padding {p} must be at most kernel_size - 1 = {k - 1}")
    fan = self.features * k ** nd
    kernel = self.param("kernel", nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform"),
                        ((k,) * nd + (x.shape[-1], self.features)))
    bias = self.param("bias", layers.torch_default_bias(fan), (self.features,))
    y = jax.lax.conv_general_dilated(
        x, jnp.flip(kernel, tuple(range(nd))), (1,) * nd, [(k - 1 - p, k - 1 - p)] * nd,
        lhs_dilation=(s,) * nd, dimension_numbers=_SPECS[nd])
    return y + bias


class ConvReg(nn.Module):
  """FitNet's regressor, RepDistiller `models/util.py: ConvReg`: conv (+bias) – BatchNorm – ReLU.

  The convolution maps the student map (spatial size `s_spatial`) onto the teacher's
  (`t_spatial`, `t_channels`) as :func:`conv_reg_spec` chooses; PyTorch's default init.
  ``use_relu=False`` is RepDistiller's variant for other methods (conv – BN only).
  """
  t_channels: int
  s_spatial: Sequence[int]
  t_spatial: Sequence[int]
  use_relu: bool = True
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    _check_map(x, "ConvReg")
    spec = conv_reg_spec(self.s_spatial, self.t_spatial)
    if tuple(x.shape[1:-1]) != tuple(self.s_spatial):
      raise ValueError(f"ConvReg built for student maps of size {tuple(self.s_spatial)} got input "
                       f"{x.shape}")
    if spec.kind == "transpose":
      y = ConvTranspose(self.t_channels, spec.kernel[0], spec.strides[0], spec.padding[0],
                        name="conv")(x)
    else:
      y = layers.Conv(self.t_channels, spec.kernel, spec.strides, spec.padding, use_bias=True,
                      kernel_init=layers.torch_default_kernel, impl=self.impl, name="conv")(x)
    y = layers.BatchNorm(name="bn")(y, train)
    return nn.relu(y) if self.use_relu else y


# --------------------------------------------------------------------------------------------------
# SimKD projector, SRRL connector


class SimKDProjector(nn.Module):
  """SimKD's projector ("transfer"), DefangChen/SimKD `models/util.py: SimKD`.

  Conv1×1(→t/f) – BN – ReLU – Conv3(→t/f, pad 1) – BN – ReLU – Conv1×1(→t) – BN – ReLU, all
  convolutions without bias, PyTorch's default init; f = `factor` (2 by default). Apply it to
  ``align(f_s, f_t)[0]`` (:func:`simkd_align`); the loss is ``MSE(P(source), target)``.
  """
  t_channels: int
  factor: int = 2
  impl: str = "gemm"

  align = staticmethod(simkd_align)

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    _check_map(x, "SimKDProjector")
    mid = self.t_channels // self.factor
    if mid < 1:
      raise ValueError(f"SimKDProjector: t_channels {self.t_channels} // factor {self.factor} is 0")

    def conv(features, kernel, padding, name):
      return layers.Conv(features, kernel, padding=padding, kernel_init=layers.torch_default_kernel,
                         impl=self.impl, name=name)

    x = nn.relu(layers.BatchNorm(name="bn1")(conv(mid, 1, 0, "conv1")(x), train))
    x = nn.relu(layers.BatchNorm(name="bn2")(conv(mid, 3, 1, "conv2")(x), train))
    return nn.relu(layers.BatchNorm(name="bn3")(conv(self.t_channels, 1, 0, "conv3")(x), train))


class SRRLConnector(nn.Module):
  """SRRL's connector, KD_SRRL `distiller_zoo/AIN.py: transfer_conv`: Conv1×1(→t_channels, no
  bias) – BN – ReLU; conv ~ N(0, sqrt(2 / (k·k·out))), BN weight 1, bias 0.

  Also takes pooled vectors (B, C) (SimKD's re-implementation puts it on the (B, C, 1, 1) vector).
  """
  t_channels: int
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    vector = x.ndim == 2
    if vector:
      x = x[:, None, :]
    _check_map(x, "SRRLConnector")
    y = layers.Conv(self.t_channels, 1, kernel_init=layers.conv_fan_out_normal, impl=self.impl,
                    name="conv")(x)
    y = nn.relu(layers.BatchNorm(name="bn")(y, train))
    return y[:, 0, :] if vector else y


# --------------------------------------------------------------------------------------------------
# CRD and CA-MKD embeddings


def torch_linear(d_in: int, d_out: int) -> layers.Linear:
  """PyTorch's `nn.Linear(d_in, d_out)` as it initialises it: kernel and bias U(±1/sqrt(d_in))
  (the projectors and heads of PEFD, DCD and the role-of-the-projector loss), its matmul at
  full float32 precision (`HIGHEST`)."""
  return layers.Linear(d_out, bias_init=layers.torch_default_bias(d_in), precision=HIGHEST)


class Embed(nn.Module):
  """CRD's embedding head, RepDistiller `crd/criterion.py: Embed`: flatten, Linear(→dim) with
  PyTorch's default init (kernel and bias ``U(±1/sqrt(in))``), then ``x / ‖x‖₂`` (no eps; a zero
  row stays 0 here). One for the student and one for the teacher, both trained."""
  dim: int = 128

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.reshape(x.shape[0], -1)
    x = layers.Linear(self.dim, bias_init=layers.torch_default_bias(x.shape[-1]),
                      precision=HIGHEST, name="linear")(x)
    ss = jnp.sum(x * x, axis=-1, keepdims=True)
    pos = ss > 0
    return jnp.where(pos, x * jax.lax.rsqrt(jnp.where(pos, ss, 1.0)), 0.0)


class CAMKDEmbed(nn.Module):
  """CA-MKD's per-teacher embed, Rorozhl/CA-MKD `models/util.py: Embed`: Conv1×1(→t_channels, bias)
  – BN – ReLU, PyTorch's default init. ``convs=True`` is its `--convs` bottleneck: Conv1×1(→s/f) –
  BN – ReLU – Conv3(→s/f, pad 1) – BN – ReLU – Conv1×1(→t) – BN – ReLU (all with bias; s = the
  input's channels, f = `factor`). Apply it to :func:`camkd_align` of the student map."""
  t_channels: int
  convs: bool = False
  factor: int = 2
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    _check_map(x, "CAMKDEmbed")

    def block(x, features, kernel, padding, i):
      x = layers.Conv(features, kernel, padding=padding, use_bias=True,
                      kernel_init=layers.torch_default_kernel, impl=self.impl, name=f"conv{i}")(x)
      return nn.relu(layers.BatchNorm(name=f"bn{i}")(x, train))

    if not self.convs:
      return block(x, self.t_channels, 1, 0, 1)
    mid = x.shape[-1] // self.factor
    if mid < 1:
      raise ValueError(f"CAMKDEmbed: input channels {x.shape[-1]} // factor {self.factor} is 0")
    x = block(x, mid, 1, 0, 1)
    x = block(x, mid, 3, 1, 2)
    return block(x, self.t_channels, 1, 0, 3)


__all__ = ["torch_linear", "adaptive_avg_pool", "simkd_align", "camkd_align", "ConvRegSpec", "conv_reg_spec",
           "ConvTranspose", "ConvReg", "SimKDProjector", "SRRLConnector", "Embed", "CAMKDEmbed"]
