"""`resnext1d`: the grouped-convolution ResNeXt-style net of the ECG notes (docs/protocol.md §3).

    stem            conv 7 (padding 3) -> BN -> act, in -> `stem_channels`
    stage{i}        `blocks_per_stage` bottlenecks ("floors"), mid_dim `stages[i]`, out 4 * mid_dim;
                    the first block of every stage but the first has stride 2
    new_connection  optional, per stage index listed in `new_connection` (see NewConnection)
    head            global average pool -> [dropout] -> Linear

Bottleneck: 1x1 conv (stride s) -> BN -> act -> grouped conv 3 (padding 1) -> BN -> act -> 1x1 conv
-> BN, inner width `mid_dim // 64 * 32 * 4`; shortcut is identity, or 1x1 conv (stride s) -> BN when
the shape changes; out = act(residual + shortcut). Activation default leaky_relu (slope 0.01, as
torch.nn.LeakyReLU). Convs followed by BN have no bias (the BN cancels it); init is PyTorch's default.

New connection (stage i): the raw input goes through conv 7 (padding 3) -> BN -> 1x1 conv to the
stage's channels -> adaptive average pool to the stage's spatial size -> BN, and is concatenated
with the stage output along the time axis (axis 1; height for images), doubling that axis for
the rest of the network. Adaptive pooling follows torch.nn.AdaptiveAvgPool (bin o averages inputs
[floor(o L / Lo), ceil((o + 1) L / Lo))), which equals AvgPool(L / Lo) whenever Lo divides L.
Works for ndim=2 as well (3x3 kernels, pooling per spatial axis).
Returns `(logits, stage outputs)`; a stage output includes its concatenated branch.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jkd.images import gaf
from jkd.models import layers

Array = jax.Array


def bottleneck_width(mid_dim: int, groups: int) -> int:
  """The notes' inner width `mid_dim // 64 * 32 * 4`; raises if it is 0 or not a multiple of groups."""
  width = mid_dim // 64 * 32 * 4
  if width == 0 or width % groups:
    raise ValueError(f"resnext1d: stage mid_dim {mid_dim} gives bottleneck width {width} "
                     f"(mid_dim // 64 * 128), which must be a positive multiple of groups={groups}; "
                     f"use mid_dims that are multiples of 64")
  return width


def adaptive_avg_pool(x: Array, size: Sequence[int]) -> Array:
  """torch.nn.AdaptiveAvgPool over the spatial axes of channels-last `x`, to spatial `size`."""
  for axis, out in enumerate(size, start=1):
    n = x.shape[axis]
    weights = np.zeros((n, out), np.float32)
    for o in range(out):
      lo, hi = (o * n) // out, -((-(o + 1) * n) // out)
      weights[lo:hi, o] = 1.0 / (hi - lo)
    x = jnp.moveaxis(jnp.tensordot(x, weights.astype(x.dtype), axes=[[axis], [0]]), -1, axis)
  return x


class Bottleneck(nn.Module):
  """One ResNeXt bottleneck block ("tenantLayer")."""
  mid_dim: int
  out_dim: int
  strides: int = 1
  groups: int = 32
  activation: str = "leaky_relu"
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    act = layers.activation(self.activation)
    width = bottleneck_width(self.mid_dim, self.groups)

    def conv(features, k, s=1, p=0, groups=1, name=None):
      return layers.Conv(features, k, s, p, feature_group_count=groups,
                         kernel_init=layers.torch_default_kernel, impl=self.conv_impl,
                         dtype=self.dtype, name=name)

    r = act(layers.BatchNorm(name="bn1")(conv(width, 1, self.strides, name="conv1")(x), train))
    r = conv(width, 3, 1, 1, self.groups, name="conv2")(r)
    r = act(layers.BatchNorm(name="bn2")(r, train))
    r = layers.BatchNorm(name="bn3")(conv(self.out_dim, 1, name="conv3")(r), train)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.out_dim:
      shortcut = conv(self.out_dim, 1, self.strides, name="proj_conv")(x)
      shortcut = layers.BatchNorm(name="proj_bn")(shortcut, train)
    return act(r + shortcut)


class NewConnection(nn.Module):
  """Raw-input side branch: conv 7 -> BN -> 1x1 conv -> adaptive avg pool to `size` -> BN."""
  hidden: int
  features: int
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, raw: Array, size: Sequence[int], train: bool) -> Array:
    conv = lambda f, k, p, name: layers.Conv(f, k, 1, p, kernel_init=layers.torch_default_kernel,
                                             impl=self.conv_impl, dtype=self.dtype, name=name)
    h = layers.BatchNorm(name="bn1")(conv(self.hidden, 7, 3, "conv1")(raw), train)
    h = adaptive_avg_pool(conv(self.features, 1, 0, "conv2")(h), size)
    return layers.BatchNorm(name="bn2")(h, train)


class ResNeXt1D(nn.Module):
  """Grouped-conv bottleneck net with optional raw-input "new connection" branches.

  Attributes:
    num_classes: logits size.
    ndim: 1 for `(B, L, C)` (the ECG use), 2 for `(B, H, W, C)`.
    stages: mid_dim per stage (multiples of 64); stage i outputs `4 * stages[i]` channels.
    blocks_per_stage: bottlenecks per stage (an int applies to every stage).
    groups: groups of the 3-wide conv (the notes: 32).
    stem_channels: channels of the stem and of each new-connection branch's first conv.
    new_connection: stage indices (0-based) whose output gets the raw-input branch concatenated.
    activation: layers.ACTIVATIONS name (default leaky_relu).
    dropout: rate before the final Linear (default 0); needs rng 'dropout' in training.
    conv_impl, dtype: as layers.Conv; logits are returned as float32.
  """
  num_classes: int
  ndim: int = 1
  stages: Sequence[int] = (64, 128, 256)
  blocks_per_stage: int | Sequence[int] = 2
  groups: int = 32
  stem_channels: int = 64
  new_connection: Sequence[int] = ()
  activation: str = "leaky_relu"
  dropout: float = 0.0
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, tuple[Array, ...]]:
    layers.check_input(x, self.ndim, "resnext1d")
    x = gaf.as_dense(x)                      # the raw-input branch needs the images themselves
    blocks = self._blocks()
    bad = [i for i in self.new_connection if not 0 <= i < len(self.stages)]
    if bad:
      raise ValueError(f"resnext1d: new_connection stage indices {bad} out of range; "
                       f"valid 0..{len(self.stages) - 1} for stages={tuple(self.stages)}")
    act = layers.activation(self.activation)
    raw = x
    x = layers.Conv(self.stem_channels, 7, 1, 3, kernel_init=layers.torch_default_kernel,
                    impl=self.conv_impl, dtype=self.dtype, name="stem_conv")(x)
    x = act(layers.BatchNorm(name="stem_bn")(x, train))
    features = []
    for i, (mid, n) in enumerate(zip(self.stages, blocks)):
      for j in range(n):
        x = Bottleneck(mid, 4 * mid, 2 if i > 0 and j == 0 else 1, self.groups, self.activation,
                       self.conv_impl, self.dtype, name=f"stage{i + 1}_block{j}")(x, train)
      if i in self.new_connection:
        branch = NewConnection(self.stem_channels, 4 * mid, self.conv_impl, self.dtype,
                               name=f"new_connection{i + 1}")(raw, x.shape[1:-1], train)
        x = jnp.concatenate([x, branch.astype(x.dtype)], axis=1)
      features.append(x)
    x = embedding = layers.global_avg_pool(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = layers.Linear(self.num_classes, bias_init=layers.torch_default_bias(x.shape[-1]),
                           dtype=self.dtype, name="fc")(x)
    return logits.astype(jnp.float32), (*features, embedding.astype(jnp.float32))

  def _blocks(self) -> tuple[int, ...]:
    b = self.blocks_per_stage
    blocks = (b,) * len(self.stages) if isinstance(b, int) else tuple(b)
    if len(blocks) != len(self.stages) or min(blocks, default=0) < 1:
      raise ValueError(f"resnext1d: blocks_per_stage={b!r} must be a positive int or one positive "
                       f"int per stage (stages={tuple(self.stages)})")
    return blocks
