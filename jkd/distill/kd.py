"""Hinton KD, `T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`, from one or many teachers.

Source: Hinton et al. 2015; RepDistiller `distiller_zoo/KD.py` (`DistillKL`, 'batchmean'·T²).
`reduction='mean'` divides by the number of classes too: PyTorch `KLDivLoss()`'s default, which
the lab's TDA_KD/TGD code uses and their λ/β assume. `standardize`: the lab's logit
standardisation (`2 z / std(z)` on both sides instead of `z / T`; T² kept).

`weighting` says how several teachers combine (the multi-teacher baselines of CA-MKD's code,
`Rorozhl/CA-MKD` helper/loops.py):
  fixed  Σ_k w_k KD_k with the stage's per-run teacher weights (α or teachers.<name>.weight)
  aver   mean_k KD_k (AVER, `AVERAGE_LOSS`)
  ebkd   per-sample weights 1 − H_kb / Σ_j H_jb from each teacher's entropy (EBKD, Kwon et al.
         ICASSP 2020 as CA-MKD re-implements it), Σ_kb w_kb KL_kb / (B·K)
  camkd  per-sample weights (1 − softmax_k CE_kb) / (K − 1) from each teacher's cross-entropy
         (CA-MKD's logit term, Zhang et al. ICASSP 2022), Σ_kb w_kb KL_kb / (B·K)
"""

import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Term, TermError

WEIGHTINGS = ("fixed", "aver", "ebkd", "camkd")


class KD(Term):
  name = "kd"
  source = "Hinton et al. 2015; RepDistiller DistillKL; CA-MKD (AVER, EBKD, CA-MKD weights)"
  defaults = {"weight": 0.9, "temperature": 4.0, "reduction": "batchmean", "standardize": False,
              "weighting": "fixed"}
  per_run = ("weight", "temperature")
  ranges = {"temperature": "> 0"}

  def check(self, cfg, teachers, student, epochs):
    if cfg.reduction not in ("batchmean", "mean"):
      raise TermError(f"loss.kd.reduction={cfg.reduction!r} is not one of batchmean, mean")
    if cfg.weighting not in WEIGHTINGS:
      raise TermError(f"loss.kd.weighting={cfg.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    if cfg.weighting in ("ebkd", "camkd") and cfg.standardize:
      raise TermError(f"loss.kd.standardize with weighting={cfg.weighting!r}: the per-sample "
                      "weighting is defined on plain logits; turn one of them off")

  def uses_teacher_weights(self, cfg):
    return cfg.weighting == "fixed"

  def loss(self, cfg, hp, batch):
    zs, zt = batch.student.logits, [t.logits for t in batch.teachers]
    t = hp["temperature"]
    if cfg.weighting in ("ebkd", "camkd"):
      stack = jnp.stack(zt)
      w = (losses.ebkd_weights(stack) if cfg.weighting == "ebkd"
           else losses.camkd_weights(stack, batch.hard_labels()))
      return losses.weighted_kd(zs, stack, w, temperature=t, reduction=cfg.reduction)
    per = jnp.stack([losses.kd_loss(zs, z, temperature=t, reduction=cfg.reduction,
                                    standardize=cfg.standardize) for z in zt])
    w = (jnp.full((len(zt),), 1.0 / len(zt)) if cfg.weighting == "aver"
         else batch.teacher_weights)
    return jnp.sum(w * per)


TERM = KD()
