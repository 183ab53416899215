"""FitNet hints (Romero et al., ICLR 2015): MSE between a regressed student map and the teacher's.

Source: RepDistiller `distiller_zoo/FitNet.py` (HintLoss = MSE) with its regressor
`models/util.py: ConvReg` (conv chosen by the two maps' sizes, then BatchNorm and ReLU), hint
layer 2 (the second stage's output), weight 100, trained jointly with the student in one stage as
both zoos do (the paper pre-trains the hint first). One regressor per teacher, kept per run in the
train state and dropped at evaluation. The teacher map must have the student's rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import Needs, Term, TermError, same_rank

Array = jax.Array


def fitnet_loss(f_s_regressed: Array, f_t: Array, mask: Array | None = None) -> Array:
  """FitNet hint loss ``nn.MSELoss()(r(f_s), f_t)``: the mean over all elements.

  RepDistiller distiller_zoo/FitNet.py `HintLoss` (weight 100 outside). Also SimKD's loss
  (``MSE(P(f_s), f_t)``, DefangChen/SimKD) and SRRL's ``L_sr = MSE(fc_t(pool(f_s')), z_t)``.
  With `mask`: the per-example mean over the other axes, then the masked mean (without a mask,
  the same as the mean over all elements).
  """
  losses.check_same(f_s_regressed, f_t, "fitnet_loss")
  f_t = jax.lax.stop_gradient(f_t)
  diff = (f_s_regressed - f_t).reshape(f_t.shape[0], -1)
  return losses.masked_mean(jnp.mean(diff * diff, axis=-1), mask)


def _regressor(s, t) -> heads.ConvReg:
  return heads.ConvReg(t.shape[-1], tuple(s.shape[1:-1]), tuple(t.shape[1:-1]))


class FitNet(Term):
  name = "fitnet"
  source = "Romero et al., ICLR 2015; RepDistiller FitNet.py and ConvReg"
  defaults = {"weight": 100.0, "hint_layer": 2}
  per_run = ("weight",)

  def check(self, cfg, teachers, student, epochs):
    if cfg.hint_layer not in (1, 2, 3):
      raise TermError(f"loss.fitnet.hint_layer={cfg.hint_layer}: choose a stage, 1, 2 or 3")
    same_rank(self.name, teachers, student, "a hint regressor maps maps of one rank")

  def needs(self, cfg):
    return Needs(stages=frozenset({cfg.hint_layer}))

  def init(self, cfg, key, student, teachers, info=None):
    s = student.stages[cfg.hint_layer]
    out = {"params": {}, "batch_stats": {}}
    for k, t in enumerate(teachers):
      v = _regressor(s, t.stages[cfg.hint_layer]).init(jax.random.fold_in(key, k),
                                                      jnp.zeros(s.shape, jnp.float32), train=False)
      out["params"][str(k)] = v["params"]
      out["batch_stats"][str(k)] = v.get("batch_stats", {})
    return out

  def loss(self, cfg, hp, batch):
    s = batch.student.stages[cfg.hint_layer]
    total, stats = jnp.float32(0.0), {}
    for k, t in enumerate(batch.teachers):
      f_t = t.stages[cfg.hint_layer]
      reg = _regressor(s, f_t)
      r, new = reg.apply({"params": batch.params[str(k)], "batch_stats": batch.batch_stats[str(k)]},
                         s, train=True, mutable=["batch_stats"])
      stats[str(k)] = new["batch_stats"]
      total = total + batch.teacher_weights[k] * fitnet_loss(r, f_t)
    return total, stats


TERM = FitNet()
