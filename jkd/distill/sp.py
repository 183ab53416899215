"""SP, similarity-preserving KD (Tung & Mori, ICCV 2019): Σ_layers ‖G_s − G_t‖²_F / b².

Source: RepDistiller `distiller_zoo/SP.py` (the last stage map, β = 3000); the lab's TGD code
sums it over the three WRN stages (`layers=(1, 2, 3)`, β = 200 on PAMAP2, 700 on GENEActiv) and
merges several teachers' Gram matrices as Σ_k w_k G_k BEFORE the row normalisation. Layer 4 is
the logits ("k = 4 representations"). `reduction='mean'` divides the layer sum by the number of
layers (TGD's `/3`). Student and teacher maps may differ in every axis but the batch, so a 2-D
image teacher teaches a 1-D student.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Needs, Term, TermError, layers_key

Array = jax.Array


def sp_loss(student_feats: Array | Sequence[Array],
            teacher_feats: Array | Sequence[Array] | Sequence[Sequence[Array]], *,
            teacher_weights: Sequence[float | Array] | Array | None = None, beta: float | Array = 1.0,
            layer_reduction: str = "sum", mask: Array | None = None) -> Array:
  """Similarity-preserving loss ``β · Σ_layers ‖G_s − G_t‖_F² / b²``.

  `student_feats`: one map per chosen layer, e.g. the WRN stage outputs (b, L, C) or (b, H, W, C),
  optionally the logits as a further "layer". Student and teacher maps of a layer may differ in every
  axis but the batch. `teacher_feats`: the same list for one teacher; with `teacher_weights`
  (w_1..w_n) it is a list of such lists, one per teacher, merged per layer as
  ``G_t = Σ_i w_i G_ti`` BEFORE row normalisation (the lab's TGD: ``α G_t1 + (1 − α) G_t2``).
  ``layer_reduction='mean'`` divides the layer sum by the number of layers (TGD's ``/3``).

  With `mask`, masked-out examples are dropped from both Gram matrices and b is the number of real
  examples; weights act as ``w_i w_j`` on entry (i, j) and b² becomes ``(Σ w)²``.
  """
  if layer_reduction not in ("sum", "mean"):
    raise ValueError(f"sp_loss layer_reduction must be 'sum' or 'mean', got {layer_reduction!r}.")
  student_feats = losses.as_list(student_feats)
  if teacher_weights is None:
    teachers, weights = [losses.as_list(teacher_feats)], [1.0]
  else:
    teachers, weights = [losses.as_list(t) for t in teacher_feats], list(teacher_weights)
    if len(teachers) != len(weights):
      raise ValueError(f"sp_loss got {len(teachers)} teachers' feature lists but {len(weights)} "
                       "teacher_weights; pass one weight per teacher.")
  for i, t in enumerate(teachers):
    if len(t) != len(student_feats):
      raise ValueError(f"sp_loss: teacher {i} gives {len(t)} feature maps but the student "
                       f"{len(student_feats)}; pass the same chosen layers for both.")
  batch = student_feats[0].shape[0]
  w = jnp.ones((batch,), jnp.float32) if mask is None else losses.check_mask(mask, batch)
  pair_weight = w[:, None] * w[None, :]
  denom = jnp.sum(w) ** 2
  total = 0.0
  for layer, fs in enumerate(student_feats):
    g_t = sum(jnp.asarray(wt, jnp.float32) * losses.gram(jax.lax.stop_gradient(t[layer]), normalize=False,
                                                  mask=mask)
              for wt, t in zip(weights, teachers))
    diff = losses.gram(fs, mask=mask) - losses.l2_normalize(g_t)
    total = total + jnp.sum(pair_weight * diff * diff)
  total = total / jnp.where(denom > 0, denom, 1.0)
  if layer_reduction == "mean":
    total = total / len(student_feats)
  return beta * total


LOGITS = 4


def pick(out, layers):
  return [out.logits if i == LOGITS else out.stages[i] for i in layers]


class SP(Term):
  name = "sp"
  source = "Tung & Mori, ICCV 2019; RepDistiller SP.py; jeunsom/TGD (multi-teacher Gram merge)"
  defaults = {"weight": 3000.0, "layers": (3,), "reduction": "sum"}
  per_run = ("weight",)

  def check(self, cfg, teachers, student, epochs):
    layers_key(cfg, "layers", self.name, (1, 2, 3, LOGITS))
    if cfg.reduction not in ("sum", "mean"):
      raise TermError(f"loss.sp.reduction={cfg.reduction!r} is not one of sum, mean")

  def needs(self, cfg):
    return Needs(stages=frozenset(set(cfg.layers) - {LOGITS}))

  def loss(self, cfg, hp, batch):
    layers = tuple(cfg.layers)
    return sp_loss(pick(batch.student, layers), [pick(t, layers) for t in batch.teachers],
                          teacher_weights=batch.teacher_weights, layer_reduction=cfg.reduction)


TERM = SP()
