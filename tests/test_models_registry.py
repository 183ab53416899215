"""Model registry: names, construction of every family, and clear errors."""

import jax
import jax.numpy as jnp
import pytest

from jkd import models
from jkd.models import layers, resnet, resnext, wrn


def test_names_and_families():
  assert models.names() == ["resnet18", "resnet34", "resnext1d", "wrn{d}_{k}"]
  m = models.create("wrn40_2", num_classes=4, ndim=2, activation="elu", dropout=0.3,
                    conv_impl="lax")
  assert isinstance(m, wrn.WideResNet)
  assert (m.depth, m.widen, m.ndim, m.activation, m.dropout, m.conv_impl) == (40, 2, 2, "elu", 0.3,
                                                                              "lax")
  assert models.create("resnet34", num_classes=3).stage_sizes == (3, 4, 6, 3)
  assert isinstance(models.create("resnext1d", num_classes=5, groups=16), resnext.ResNeXt1D)
  assert isinstance(models.create("resnet18", num_classes=5), resnet.ResNet)


@pytest.mark.parametrize("name,kwargs,match", [
    ("vgg16", {}, r"unknown model 'vgg16'.*wrn\{d\}_\{k\}"),
    ("wrn15_1", {}, r"6n \+ 4.*valid names"),
    ("wrn4_1", {}, r"6n \+ 4"),
    ("wrn16_0", {}, r"widen factor"),
    ("wrn16_1", {"groups": 4}, r"unknown option.*groups.*accepted"),
    ("wrn16_1", {"conv_impl": "fft"}, r"conv_impl"),
    ("wrn16_1", {"dropout": 1.5}, r"dropout"),
    ("wrn16_1", {"ndim": 3}, r"ndim"),
    ("wrn16_1", {"num_classes": 0}, r"num_classes"),
])
def test_registry_errors(name, kwargs, match):
  kwargs = {"num_classes": 3, **kwargs}
  with pytest.raises(ValueError, match=match):
    models.create(name, **kwargs)


def test_input_rank_and_activation_errors():
  m = models.create("wrn16_1", num_classes=3, ndim=2)
  with pytest.raises(ValueError, match=r"ndim=2 expects input \(batch, height, width"):
    jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((2, 8, 3))))
  with pytest.raises(ValueError, match=r"unknown activation 'swish'"):
    models.create("wrn16_1", num_classes=3, activation="swish")


def test_conv_formulation_defaults_to_auto_and_can_be_chosen(monkeypatch):
  assert models.create("wrn16_1", num_classes=3).conv_impl == "auto"
  assert models.create("wrn16_1", num_classes=3, ndim=2).conv_impl == "auto"
  monkeypatch.setenv("JKD_CPU_CONV", "0")          # without the AVX-512 kernel: gemm 1-D, loop 2-D
  assert layers.resolve_impl("auto", 1) == "gemm" and layers.resolve_impl("auto", 2) == "loop"
  assert models.create("resnet18", num_classes=3, ndim=2, conv_impl="gemm").conv_impl == "gemm"
