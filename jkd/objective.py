"""The training objective of a run: `(logits, features, labels, hp, context) -> (total, terms)`.

Returns `(total, terms, new_state)`: `terms` are the named loss terms logged per epoch; `hp` holds the run's (possibly swept) loss.*
values as traced scalars. Labels are int (B,) or soft (B, K) (mixup/cutmix). `context` carries
what the step knows beyond the batch: `epoch` (0-based, traced) and, when an engine extension
supplies a guide (frozen teachers, `jkd.teachers.Prepared`), `teachers`, and `distill`, the run's
trainable parts of distillation terms; `new_state` is their updated batch statistics (None here;
the distillation objective is `jkd.distill.make_objective`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import ml_collections as mc

from jkd import losses

Array = jax.Array
Objective = Callable[[Array, tuple, Array, Mapping[str, Array], Mapping],
                     tuple[Array, dict[str, Array], object]]


def make(config: mc.ConfigDict) -> Objective:
  name = config.loss.name

  def objective(logits, features, labels, hp, context):
    del features, context
    if name == "ce":
      terms = {"ce": losses.cross_entropy(logits, labels,
                                          label_smoothing=hp["loss.label_smoothing"])}
    elif name == "focal":
      terms = {"focal": losses.focal_loss(logits, labels, gamma=hp["loss.gamma"])}
    else:
      raise ValueError(f"loss.name={name!r} is not one of ce, focal")
    return sum(terms.values()), terms, None

  return objective
