"""ResNet-18/34 of the notes (docs/protocol.md §3), 1-D or 2-D, channels-last.

    stem        ConvBlock(64, 7-wide, stride 2, padding 3) -> max-pool 3, stride 2, padding 1
    stage{1..4} ResBlocks with 64 * 2^i channels; the first block of stages 2-4 has stride 2
    head        global average pool -> [dropout] -> Linear

ConvBlock = conv -> BN -> act. ResBlock = `act(residual(x) + shortcut(x))`, residual
ConvBlock(3, stride s) -> ConvBlock(3, stride 1), shortcut a 1x1 conv (with bias) of the block's
stride in *every* block, as docs/protocol.md §3 states (also where the shape does not change).
Convs followed by BN have no bias (it would be cancelled by the BN). Init is PyTorch's default.
Returns `(logits, (stage1, stage2, stage3, stage4))`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jkd.models import layers

Array = jax.Array
STAGE_SIZES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class ConvBlock(nn.Module):
  """conv (no bias) -> BN -> act."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 1
  activation: str = "relu"
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = layers.Conv(self.features, self.kernel_size, self.strides, self.padding,
                    kernel_init=layers.torch_default_kernel, impl=self.conv_impl, dtype=self.dtype,
                    name="conv")(x)
    return layers.activation(self.activation)(layers.BatchNorm(name="bn")(x, train))


class ResBlock(nn.Module):
  """`act(ConvBlock(3, s) -> ConvBlock(3, 1)  +  Conv1x1(s)(x))`."""
  features: int
  strides: int = 1
  activation: str = "relu"
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    block = lambda s, name: ConvBlock(self.features, 3, s, 1, self.activation, self.conv_impl,
                                      self.dtype, name=name)
    r = block(self.strides, "conv_block1")(x, train)
    r = block(1, "conv_block2")(r, train)
    shortcut = layers.Conv(self.features, 1, self.strides, 0, use_bias=True,
                           kernel_init=layers.torch_default_kernel, impl=self.conv_impl,
                           dtype=self.dtype, name="shortcut")(x)
    return layers.activation(self.activation)(r + shortcut)


class ResNet(nn.Module):
  """ResNet with `stage_sizes` ResBlocks per stage (resnet18: 2,2,2,2; resnet34: 3,4,6,3).

  Attributes:
    stage_sizes: blocks per stage; stage i has `64 * 2**i` channels.
    num_classes: logits size.
    ndim: 1 for `(B, L, C)`, 2 for `(B, H, W, C)`.
    activation: layers.ACTIVATIONS name (default relu).
    dropout: rate before the final Linear (default 0); needs rng 'dropout' in training.
    conv_impl, dtype: as layers.Conv; logits are returned as float32.
  """
  stage_sizes: Sequence[int]
  num_classes: int
  ndim: int = 1
  activation: str = "relu"
  dropout: float = 0.0
  conv_impl: str = "gemm"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, tuple[Array, ...]]:
    layers.check_input(x, self.ndim, "ResNet")
    x = ConvBlock(64, 7, 2, 3, self.activation, self.conv_impl, self.dtype, name="stem")(x, train)
    window = (3,) * self.ndim
    x = nn.max_pool(x, window, strides=(2,) * self.ndim, padding=((1, 1),) * self.ndim)
    features = []
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = ResBlock(64 * 2**i, 2 if i > 0 and j == 0 else 1, self.activation, self.conv_impl,
                     self.dtype, name=f"stage{i + 1}_block{j}")(x, train)
      features.append(x)
    x = embedding = layers.global_avg_pool(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = layers.Linear(self.num_classes, bias_init=layers.torch_default_bias(x.shape[-1]),
                           dtype=self.dtype, name="fc")(x)
    return logits.astype(jnp.float32), (*features, embedding.astype(jnp.float32))
