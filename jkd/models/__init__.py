"""Model registry: `create(name, num_classes=..., ndim=...)` -> a Flax Linen module.

Every module is applied as `apply(variables, x, train=bool)` (with `mutable=['batch_stats']` when
training, and rng 'dropout' when a dropout rate > 0) and returns `(logits, features)`, `features`
being the stage outputs followed by the pooled embedding (the vector the classifier reads; the
CIFAR distillation zoos' `feat[-1]`): `features[:-1]` are the maps, `features[-1]` is (B, D). Inputs are channels-last: `(B, L, C)` for ndim=1,
`(B, H, W, C)` for ndim=2.

    wrn{d}_{k}   Wide-ResNet, d = 6n + 4 (n >= 1), k >= 1      jkd.models.wrn
    resnet18/34  ResNet                                        jkd.models.resnet
    resnext1d    grouped-conv bottleneck net (ECG)             jkd.models.resnext
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn

from jkd.models import layers, resnet, resnext, wrn

_WRN = re.compile(r"wrn(\d+)_(\d+)")


def names() -> list[str]:
  """Valid model names; `wrn{d}_{k}` stands for every depth d = 6n + 4 and widen factor k >= 1."""
  return ["resnet18", "resnet34", "resnext1d", "wrn{d}_{k}"]


def create(name: str, *, num_classes: int, ndim: int = 1, **kwargs: Any) -> nn.Module:
  """Build model `name` (see names()). kwargs: activation, dropout, conv_impl ('auto'|'gemm'|'lax'|
  'loop'; default 'auto': the AVX-512 convolution kernel where it runs, else 'gemm' in 1-D and
  'loop' in 2-D where im2col would copy the image 9 times: measured in jkd.models.layers), dtype,
  and for resnext1d also stages, blocks_per_stage, groups, stem_channels, new_connection."""
  if ndim not in (1, 2):
    raise ValueError(f"model {name!r}: ndim must be 1 (signals) or 2 (images), got {ndim}")
  kwargs.setdefault("conv_impl", "auto")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"model {name!r}: num_classes must be a positive int, got {num_classes!r}")
  if (m := _WRN.fullmatch(name)):
    depth, widen = int(m.group(1)), int(m.group(2))
    try:
      wrn.num_blocks(depth)
    except ValueError as e:
      raise ValueError(f"model {name!r}: {e}; valid names: {_valid()}") from None
    if widen < 1:
      raise ValueError(f"model {name!r}: widen factor k must be >= 1; valid names: {_valid()}")
    return _build(name, wrn.WideResNet, kwargs, depth=depth, widen=widen, num_classes=num_classes,
                  ndim=ndim)
  if name in resnet.STAGE_SIZES:
    return _build(name, resnet.ResNet, kwargs, stage_sizes=resnet.STAGE_SIZES[name],
                  num_classes=num_classes, ndim=ndim)
  if name == "resnext1d":
    return _build(name, resnext.ResNeXt1D, kwargs, num_classes=num_classes, ndim=ndim)
  raise ValueError(f"unknown model {name!r}; valid names: {_valid()}")


def _valid() -> str:
  return ", ".join(names()) + " (wrn: d = 6n + 4 >= 10, k >= 1, e.g. wrn16_1, wrn28_3, wrn40_2)"


def _build(name: str, cls: type[nn.Module], kwargs: dict[str, Any], **fixed: Any) -> nn.Module:
  allowed = {f.name for f in dataclasses.fields(cls)} - set(fixed) - {"parent", "name"}
  unknown = sorted(set(kwargs) - allowed)
  if unknown:
    raise ValueError(f"model {name!r}: unknown option(s) {unknown}; accepted: {sorted(allowed)}")
  if kwargs["conv_impl"] not in layers.CONV_IMPLS:          # create() always sets it
    raise ValueError(f"model {name!r}: conv_impl must be one of {layers.CONV_IMPLS}, got {kwargs['conv_impl']!r}")
  layers.activation(kwargs.get("activation", "relu"))  # raises for an unknown name, listing valid ones
  if not 0.0 <= kwargs.get("dropout", 0.0) < 1.0:
    raise ValueError(f"model {name!r}: dropout must be in [0, 1), got {kwargs['dropout']!r}")
  return cls(**fixed, **kwargs)
