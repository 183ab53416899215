"""Shared pieces of the distillation-term tests: a KD stage's config with teachers `a` (a 1-D WRN
section, weight 1) and `b` (a 1-D ResNet section, weight 2), the per-run values of its keys, a
world of random outputs for terms on pooled embeddings, and a tiny WRN-shaped teacher (stage map taken before its head `batch_norm` → ReLU → pool → `fc`, at a
quarter of the input's length, embedding width 5)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np

from jkd import config as config_lib
from jkd import distill
from jkd.distill import Outputs
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


def embedding_world(c: mc.ConfigDict, teacher_scale: float = 1.0, batch: int = 6,
                    classes: int = 3, d_s: int = 8, d_t: tuple = (12, 5)) -> dict:
  """Random student outputs (stages (B, 8, 4), (B, 4, 8), embedding (B, d_s)), one teacher per
  width in `d_t` (logits × `teacher_scale`, embedding only), labels, the terms' parts from
  `distill.init` and `run(own, hp=None)`: the jitted objective in epoch 0."""
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  student = (n(batch, classes), (n(batch, 8, 4), n(batch, 4, 8), n(batch, d_s)))
  teach = [Outputs(n(batch, classes) * teacher_scale, {}, n(batch, d)) for d in d_t]
  labels = jnp.asarray(r.integers(0, classes, batch), jnp.int32)
  own = distill.init(c.loss, jax.random.PRNGKey(0), Outputs.of(*student), teach)
  obj = jax.jit(distill.make_objective(c))

  def run(own, hp=None):
    ctx = {"epoch": jnp.int32(0), "teachers": teach, "distill": own}
    return obj(*student, labels, per_run_hp(c) if hp is None else hp, ctx)

  return dict(c=c, student=student, teach=teach, labels=labels, own=own, run=run)


class TinyWRN(nn.Module):
  classes: int

  @nn.compact
  def __call__(self, x, train=False):
    h = layers.Conv(5, 4, strides=4)(x)
    emb = layers.global_avg_pool(nn.relu(layers.BatchNorm(name="batch_norm")(h, train)))
    return layers.Linear(self.classes, name="fc")(emb), (h, emb)
