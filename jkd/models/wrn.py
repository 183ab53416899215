"""Wide-ResNet `wrn{d}_{k}` exactly as the lab's "WRN_sp" (docs/protocol.md §2), 1-D or 2-D.

Returns `(logits, (stage1, stage2, stage3, embedding))`; the stage outputs are taken before the final
BN-ReLU, the embedding is the pooled vector the classifier reads (the SP "attention" maps). The parameter tree mirrors the PyTorch state dict, so a
checkpoint converter is a rename: `block{s}.nblockLayer.{i}.<m>` -> `block{s}/layer_{i}/<m>`.

    conv1                      stem, 3-wide, stride 1, in -> 16
    block{1,2,3}/layer_{i}/    batch_norm1, conv1, batch_norm2, conv2[, conv_inp]
    batch_norm, fc             head: BN -> act -> global average pool -> Linear(64k -> classes)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jkd.models import layers

Array = jax.Array
STAGE_STRIDES = (1, 2, 2)  # stage1..3; the stem has stride 1 (docs/protocol.md §2: [1, 1, 2, 2]).


def num_blocks(depth: int) -> int:
  """Blocks per stage, N = (d - 4) / 6; raises for a depth no WRN has."""
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
  return (depth - 4) // 6


class WRNLayer(nn.Module):
  """One pre-activation block ("IndividualBlock1" when `projection`, else "IndividualBlockN").

  With `projection` (the first block of a stage that subsamples or widens) the shortcut is the 1x1
  conv `conv_inp` applied to the *pre-activated* input `a = act(bn1(x))`; otherwise it is `x`.
  """
  features: int
  strides: int
  projection: bool
  activation: str = "relu"
  dropout: float = 0.0
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    act = layers.activation(self.activation)
    conv = lambda k, s, p, name: layers.Conv(self.features, k, s, p, impl=self.conv_impl,
                                             dtype=self.dtype, name=name)
    a = act(layers.BatchNorm(name="batch_norm1")(x, train))
    h = conv(3, self.strides, 1, "conv1")(a)
    h = act(layers.BatchNorm(name="batch_norm2")(h, train))
    if self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(3, 1, 1, "conv2")(h)
    shortcut = conv(1, self.strides, 0, "conv_inp")(a) if self.projection else x
    return shortcut + h


class WRNStage(nn.Module):
  """`blocks` WRNLayers named `layer_0..`; the first carries the stage's stride and projection."""
  features: int
  blocks: int
  strides: int
  projection: bool
  activation: str = "relu"
  dropout: float = 0.0
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    for i in range(self.blocks):
      x = WRNLayer(self.features, self.strides if i == 0 else 1, self.projection and i == 0,
                   self.activation, self.dropout, self.conv_impl, self.dtype,
                   name=f"layer_{i}")(x, train)
    return x


class WideResNet(nn.Module):
  """Wide-ResNet of depth `depth` and widen factor `widen`, channels-last input of rank `ndim + 2`.

  Attributes:
    depth: 6n + 4 (n blocks per stage).
    widen: k; stages have 16k, 32k, 64k filters (the stem always 16).
    num_classes: logits size.
    ndim: 1 for signals `(B, L, C)`, 2 for images `(B, H, W, C)`.
    activation: layers.ACTIVATIONS name (the lab: relu).
    dropout: rate between the two convs of each block (the lab: 0); needs rng 'dropout' in training.
    conv_impl: 'gemm', 'lax' or 'loop' (layers.Conv).
    dtype: computation dtype or None; logits are returned as float32.
  """
  depth: int
  widen: int
  num_classes: int
  ndim: int = 1
  activation: str = "relu"
  dropout: float = 0.0
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, tuple[Array, ...]]:
    layers.check_input(x, self.ndim, "WideResNet")
    n, k = num_blocks(self.depth), self.widen
    x = layers.Conv(16, 3, 1, 1, impl=self.conv_impl, dtype=self.dtype, name="conv1")(x)
    features = []
    for s, (width, stride) in enumerate(zip((16 * k, 32 * k, 64 * k), STAGE_STRIDES)):
      projection = stride != 1 or width != 16  # subsample_input or increase_filters
      x = WRNStage(width, n, stride, projection, self.activation, self.dropout, self.conv_impl,
                   self.dtype, name=f"block{s + 1}")(x, train)
      features.append(x)
    x = layers.activation(self.activation)(layers.BatchNorm(name="batch_norm")(x, train))
    embedding = layers.global_avg_pool(x)
    logits = layers.Linear(self.num_classes, dtype=self.dtype, name="fc")(embedding)
    return logits.astype(jnp.float32), (*features, embedding.astype(jnp.float32))

