"""SRRL, softmax-regression representation learning (Yang et al., ICLR 2021).

Source: jingyang2017/KD_SRRL `distiller_zoo/AIN.py` (`transfer_conv`, `statm_loss`) and
`train_imagenet_distillation.py`; the CIFAR code jingyang2017/SRD_ossl `train_student.py` and
`helper/loops.py` ('srd'): `CE + β·(statm + L_sr)` with β = 1 (list 'ce' and 'srrl').

Per teacher k a connector (Conv1×1 → the teacher's channels, no bias – BN – ReLU) maps the
student's last stage map to f_s'. `statm = mean_b mean_c (pool(f_s') − pool(f_t))²` (the squared
L2 of the pooled features) and `L_sr = MSE(fc_t(pool(f_s')), z_t)`: the teacher's classifier on
the connected student features against the teacher's logits. f_t is the map the teacher's
classifier pools, as the authors' `feat_t[-2]` (a WRN teacher's act(batch_norm(map)), eval mode;
`jkd.models.head`). Pooled features only, so a teacher of another rank works too. Teachers add
up by their weights: Σ_k w_k (statm_k + L_sr_k).

Trainable: the connectors (params and BatchNorm statistics, per run). Non-trainable: a copy of
each teacher's classifier head, taken from the run's teacher at init. Both are dropped at
inference: the student predicts with its own fc.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import LAST, Needs, Term, last_map, require_teacher_variables
from jkd.models import head as head_lib
from jkd.distill import fitnet

Array = jax.Array


def srrl_statm_loss(f_s_connected: Array, f_t: Array, mask: Array | None = None) -> Array:
  """SRRL feature term ``mean_b mean_c (mean_pos f_s'[b, c] − mean_pos f_t[b, c])²``.

  jingyang2017/KD_SRRL distiller_zoo/AIN.py `statm_loss`: the squared L2 between the spatially
  average-pooled connector output (B, *spatial, C) and teacher map (channels-last; the spatial
  sizes may differ, the channels must match), averaged over channels and (masked) examples.
  """
  if f_s_connected.shape[0] != f_t.shape[0] or f_s_connected.shape[-1] != f_t.shape[-1]:
    raise ValueError(f"srrl_statm_loss: student {f_s_connected.shape} and teacher {f_t.shape} need "
                     "the same batch and channel sizes; connect the student to the teacher's channels.")
  f_t = jax.lax.stop_gradient(f_t)
  pool = lambda f: jnp.mean(f, axis=tuple(range(1, f.ndim - 1))) if f.ndim > 2 else f
  diff = pool(f_s_connected) - pool(f_t)
  return losses.masked_mean(jnp.mean(diff * diff, axis=-1), mask)


class SRRL(Term):
  name = "srrl"
  source = "Yang et al., ICLR 2021; jingyang2017/KD_SRRL distiller_zoo/AIN.py"
  defaults = {"weight": 1.0}
  per_run = ("weight",)

  def needs(self, cfg):
    return Needs(stages=frozenset({LAST}))

  def init(self, cfg, key, student, teachers, info=None):
    require_teacher_variables(self.name, info, len(teachers))
    s = jnp.zeros(last_map(student).shape, jnp.float32)
    params, stats = {}, {}
    for k, t in enumerate(teachers):
      v = heads.SRRLConnector(last_map(t).shape[-1]).init(jax.random.fold_in(key, k), s,
                                                          train=False)
      params[str(k)] = v["params"]
      stats[str(k)] = {"connector": v["batch_stats"], "head": head_lib.of(
          info.teacher_models[k]).variables(info.teacher_variables[k])}
    return {"params": params, "batch_stats": stats}

  def loss(self, cfg, hp, batch):
    s = last_map(batch.student)
    total, stats = jnp.float32(0.0), {}
    for k, t in enumerate(batch.teachers):
      head, hv = head_lib.of(batch.teacher_models[k]), batch.batch_stats[str(k)]["head"]
      f_t = head.features(hv, last_map(t))
      c, new = heads.SRRLConnector(f_t.shape[-1]).apply(
          {"params": batch.params[str(k)], "batch_stats": batch.batch_stats[str(k)]["connector"]},
          s, train=True, mutable=["batch_stats"])
      statm = srrl_statm_loss(c, f_t)
      l_sr = fitnet.fitnet_loss(head.logits(hv, c), t.logits)
      stats[str(k)] = {"connector": new["batch_stats"], "head": hv}
      total = total + batch.teacher_weights[k] * (statm + l_sr)
    return total, stats


TERM = SRRL()
