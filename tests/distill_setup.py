"""Shared pieces of the distillation-term tests: a KD stage's config with teachers `a` (a 1-D WRN
section, weight 1) and `b` (a 1-D ResNet section, weight 2), the per-run values of its keys, and
a tiny WRN-shaped teacher (stage map taken before its head `batch_norm` → ReLU → pool → `fc`, at a
quarter of the input's length, embedding width 5)."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections as mc

from jkd import config as config_lib
from jkd import distill
from jkd.models import layers

MODELS = {"a": {"name": "wrn10_1", "ndim": 1}, "b": {"name": "resnet18", "ndim": 1}}


def kd_config(terms, teachers=("a", "b"), **sections) -> mc.ConfigDict:
  """A KD stage's config listing `terms`; `sections`: term name -> overrides of its keys."""
  loss = distill.loss_defaults(tuple(terms))
  for name, over in sections.items():
    loss[name].update(over)
  return mc.ConfigDict({
      "train": {"epochs": 3}, "distill": {"teachers": tuple(teachers)},
      "teachers": {t: {"weight": 1.0 + i, "model": MODELS[t]} for i, t in enumerate(teachers)},
      "loss": loss})


def per_run_hp(c: mc.ConfigDict, **over) -> dict:
  """The stage's per-run keys at their config values (`over`: dotted key -> another value)."""
  return {k: jnp.float32(over.get(k, config_lib.get(c, k)))
          for k in distill.per_run_keys(c.loss, tuple(c.distill.teachers))}


class TinyWRN(nn.Module):
  classes: int

  @nn.compact
  def __call__(self, x, train=False):
    h = layers.Conv(5, 4, strides=4)(x)
    emb = layers.global_avg_pool(nn.relu(layers.BatchNorm(name="batch_norm")(h, train)))
    return layers.Linear(self.classes, name="fc")(emb), (h, emb)
