"""CA-MKD's intermediate term (Zhang et al., ICASSP 2022, confidence-aware multi-teacher KD).

Source: Rorozhl/CA-MKD `distiller_zoo/CAMKD.py`, `models/util.py` (`Embed`, `CalWeight`),
`helper/loops.py: train_distill_multi_teacher`, `scripts/run.sh` (`CE + 1·L_KD + 50·L_inter`,
L_inter dropped in the first epoch). CA-MKD's logit term is `kd` with `weighting='camkd'`; the
whole method is `loss.terms=('ce', 'kd', 'camkd')` with that weighting.

Per teacher k the student's last stage map is aligned to the teacher's size (adaptive average
pooling if the ORIGINAL student map is at least as large, else (bi)linear upsampling) and goes
through an embed
(Conv1×1 with bias – BN – ReLU, or the 3-conv bottleneck with `convs`) to give F_k. The teacher's
classifier on F_k gives logits whose per-sample cross-entropy sets the weights
w_kb = (1 − softmax_k CE_kb) / (K − 1) — NOT detached, as in the authors' code, so the gradient
flows through the weights. `L_inter = Σ_k Σ_b w_kb · mean(F_k − f_t,k)² / (B·K)`, with f_t,k the
map teacher k's classifier pools (the authors' `feat_t[-2]`; a WRN teacher's act(batch_norm(map)),
eval mode, `jkd.models.head`). The term is 0 before epoch `start_epoch` (0-based; the authors
drop it in their epoch 1, i.e. `start_epoch=1`); its parts still see the batch (BatchNorm
statistics move) as there.

The alignment (`chained`, static; `align`):
  True   (default, the authors' code) `CalWeight.forward` reassigns `feat_s` in its loop over
         the teachers: teacher k's alignment starts from teacher k−1's ALIGNED map (before its
         embed), teacher 0's from the student's map; the branch (pool or upsample) is decided
         on the original map's size. With teachers of different sizes a later teacher sees a
         re-pooled (or upsampled) copy of an earlier alignment, not the student's map.
  False  each teacher's alignment starts from the student's own map (independent), as jkd did
         before; the same as True when every teacher's map has the student's size.

Trainable: the embeds (params and BatchNorm statistics, per run). Non-trainable: a copy of each
teacher's classifier head, taken from the run's teacher at init. Both are dropped at inference.
Needs at least two teachers (the weights divide by K − 1), each of the student's rank.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import (LAST, Needs, Term, TermError, last_map, require_teacher_variables,
                              same_rank)
from jkd.models import head as head_lib
from jkd.distill import kd

Array = jax.Array


def camkd_feature_loss(student_feats: Sequence[Array], teacher_feats: Sequence[Array],
                       head_logits: Array | Sequence[Array], labels: Array, *,
                       mask: Array | None = None) -> Array:
  """CA-MKD intermediate term ``Σ_k Σ_b w_kb · mean_{pos,C}(F_k − f_t,k)² / (B · K)``.

  Rorozhl/CA-MKD distiller_zoo/CAMKD.py: `student_feats[k]` = F_k, the aligned student map after
  teacher k's embed; `teacher_feats[k]` its teacher's map (constant); `head_logits` (K, B, C) (or a
  list) = teacher k's pooling + fc applied to F_k. ``w = (1 − softmax_k CE(head_k, y)) / (K − 1)``
  is NOT detached, as in the authors' code: gradients flow through the weights into F_k.
  Weight 50 outside (and dropped in epoch 1 there).
  """
  if len(student_feats) != len(teacher_feats):
    raise ValueError(f"camkd_feature_loss: {len(student_feats)} student maps but "
                     f"{len(teacher_feats)} teacher maps; pass one of each per teacher.")
  head_logits = head_logits if hasattr(head_logits, "shape") else jnp.stack(list(head_logits))
  if head_logits.shape[0] != len(student_feats):
    raise ValueError(f"camkd_feature_loss: {head_logits.shape[0]} heads' logits for "
                     f"{len(student_feats)} teachers.")
  weights = kd.confidence_weights(head_logits, labels)
  mse = []
  for f_s, f_t in zip(student_feats, teacher_feats):
    losses.check_same(f_s, f_t, "camkd_feature_loss")
    diff = (f_s - jax.lax.stop_gradient(f_t)).reshape(f_s.shape[0], -1)
    mse.append(jnp.mean(diff * diff, axis=-1))
  return losses.masked_mean(jnp.sum(weights * jnp.stack(mse), axis=0), mask) / len(student_feats)


def align(f_s: jax.Array, spatials, chained: bool = True) -> list:
  """The student map aligned to each teacher's size in turn (`CalWeight.forward`): chained
  (each from the previous teacher's aligned map) or each from `f_s`; pool or upsample decided
  on `f_s`'s size."""
  out, x = [], f_s
  for sp in spatials:
    x = heads.camkd_align(x if chained else f_s, sp, pool=f_s.shape[1] >= tuple(sp)[0])
    out.append(x)
  return out


class CAMKD(Term):
  name = "camkd"
  source = "Zhang et al., ICASSP 2022; Rorozhl/CA-MKD distiller_zoo/CAMKD.py, models/util.py"
  defaults = {"weight": 50.0, "convs": False, "start_epoch": 1, "chained": True}
  per_run = ("weight",)
  ranges = {"start_epoch": ">= 0"}

  def check(self, cfg, teachers, student, epochs):
    if not isinstance(cfg.convs, bool):
      raise TermError(f"loss.camkd.convs={cfg.convs!r} must be True or False")
    if not isinstance(cfg.chained, bool):
      raise TermError(f"loss.camkd.chained={cfg.chained!r} must be True or False")
    if int(cfg.start_epoch) != cfg.start_epoch or cfg.start_epoch < 0:
      raise TermError(f"loss.camkd.start_epoch={cfg.start_epoch!r} must be an integer >= 0")
    if len(teachers) < 2:
      raise TermError(f"loss.camkd weighs teachers by (1 − softmax CE)/(K − 1) and needs at least "
                      f"two; the stage has {len(teachers)}; add a teacher or drop 'camkd'")
    same_rank(self.name, teachers, student, "CA-MKD aligns maps of one rank")

  def uses_teacher_weights(self, cfg):
    return False

  def needs(self, cfg):
    return Needs(stages=frozenset({LAST}))

  def _embed(self, cfg, t_channels):
    return heads.CAMKDEmbed(t_channels, convs=bool(cfg.convs))

  def init(self, cfg, key, student, teachers, info=None):
    require_teacher_variables(self.name, info, len(teachers))
    s = jnp.zeros(last_map(student).shape, jnp.float32)
    aligned = align(s, [last_map(t).shape[1:-1] for t in teachers], bool(cfg.chained))
    params, stats = {}, {}
    for k, t in enumerate(teachers):
      f_t = last_map(t)
      v = self._embed(cfg, f_t.shape[-1]).init(jax.random.fold_in(key, k), aligned[k],
                                               train=False)
      params[str(k)] = v["params"]
      stats[str(k)] = {"embed": v["batch_stats"], "head": head_lib.of(
          info.teacher_models[k]).variables(info.teacher_variables[k])}
    return {"params": params, "batch_stats": stats}

  def loss(self, cfg, hp, batch):
    aligned = align(last_map(batch.student), [last_map(t).shape[1:-1] for t in batch.teachers],
                    bool(cfg.chained))
    feats, targets, logits, stats = [], [], [], {}
    for k, t in enumerate(batch.teachers):
      head, hv = head_lib.of(batch.teacher_models[k]), batch.batch_stats[str(k)]["head"]
      f_t = head.features(hv, last_map(t))
      f, new = self._embed(cfg, f_t.shape[-1]).apply(
          {"params": batch.params[str(k)], "batch_stats": batch.batch_stats[str(k)]["embed"]},
          aligned[k], train=True, mutable=["batch_stats"])
      feats.append(f)
      targets.append(f_t)
      logits.append(head.logits(hv, f))
      stats[str(k)] = {"embed": new["batch_stats"], "head": hv}
    value = camkd_feature_loss(feats, targets, logits, batch.hard_labels())
    return jnp.where(batch.epoch >= int(cfg.start_epoch), value, 0.0), stats


TERM = CAMKD()
