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
from typing import Any

import flax.linen as nn

from jkd.models import layers, resnet, resnext, wrn
from jkd.registry import Registry

def _wrn(name: str, kwargs: dict, *, num_classes: int, ndim: int, depth: str, widen: str):
  depth, widen = int(depth), int(widen)
  try:
    wrn.num_blocks(depth)
  except ValueError as e:
    raise ValueError(f"model {name!r}: {e}; valid names: {_valid()}") from None
  if widen < 1:
    raise ValueError(f"model {name!r}: widen factor k must be >= 1; valid names: {_valid()}")
  return _build(name, wrn.WideResNet, kwargs, depth=depth, widen=widen, num_classes=num_classes,
                ndim=ndim)


def _resnet(name: str, kwargs: dict, *, num_classes: int, ndim: int):
  return _build(name, resnet.ResNet, kwargs, stage_sizes=resnet.STAGE_SIZES[name],
                num_classes=num_classes, ndim=ndim)


def _resnext(name: str, kwargs: dict, *, num_classes: int, ndim: int):
  return _build(name, resnext.ResNeXt1D, kwargs, num_classes=num_classes, ndim=ndim)


# Model families by name: `builder(name, kwargs, num_classes=, ndim=, **pattern groups)`. A user's
# module may register its own (`MODELS.register("mynet", builder)`).
MODELS = Registry("model", ValueError)
MODELS.register("wrn{d}_{k}", _wrn, pattern=r"wrn(?P<depth>\d+)_(?P<widen>\d+)")
for _name in resnet.STAGE_SIZES:
  MODELS.register(_name, _resnet)
MODELS.register("resnext1d", _resnext)


def names() -> list[str]:
  """Valid model names; `wrn{d}_{k}` stands for every depth d = 6n + 4 and widen factor k >= 1."""
  return sorted(MODELS.names())


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
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: {_valid()}")
  builder, groups = MODELS.match(name)
  return builder(name, kwargs, num_classes=num_classes, ndim=ndim, **groups)


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
