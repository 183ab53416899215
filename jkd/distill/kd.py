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

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Term, TermError

Array = jax.Array


def check_teacher_logits(teacher_logits: Array) -> Array:
  teacher_logits = jnp.asarray(teacher_logits)
  if teacher_logits.ndim != 3:
    raise ValueError(f"teacher logits must be stacked as (teachers, batch, classes), got shape "
                     f"{teacher_logits.shape}.")
  return teacher_logits


def ebkd_weights(teacher_logits: Array) -> Array:
  """EBKD teacher weights (K, B) as CA-MKD's re-implementation computes them.

  ``H_kb = −Σ_c p log p`` with ``p = softmax(z_kb)`` (T = 1), ``w_kb = 1 − H_kb / Σ_j H_jb``: each
  column sums to K − 1 (not 1). ``p log p`` is computed as ``p · log_softmax`` (0 for an underflowed
  p, where ``torch.log`` gives NaN); if every teacher's entropy is 0 the weights are 1.
  """
  z = jax.lax.stop_gradient(check_teacher_logits(teacher_logits))
  log_p = jax.nn.log_softmax(z, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  return 1.0 - losses.safe_div(entropy, jnp.sum(entropy, axis=0, keepdims=True))


def confidence_weights(logits: Array, labels: Array) -> Array:
  """``(1 − softmax_k(CE(z_kb, y_b))) / (K − 1)`` (K, B) of logits (K, B, C), NOT detached:
  CA-MKD's weights of its logit term (teachers' logits, through `camkd_weights`) and of its
  feature term (the teachers' heads on the student's features, `jkd.distill.camkd`)."""
  logits = check_teacher_logits(logits)
  k = logits.shape[0]
  if k < 2:
    raise ValueError(f"CA-MKD weights need at least 2 teachers (they divide by K − 1), got {k}.")
  labels = losses.check_labels(labels, logits[0])
  log_p = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(log_p, labels[None, :, None], axis=-1)[..., 0]          # (K, B)
  return (1.0 - jax.nn.softmax(ce, axis=0)) / (k - 1)


def camkd_weights(teacher_logits: Array, labels: Array) -> Array:
  """CA-MKD teacher weights (K, B): ``(1 − softmax_k(CE(z_kb, y_b))) / (K − 1)``; columns sum to 1.

  CE at T = 1 per example; the softmax runs over the teachers. Teacher logits are constants.
  """
  return confidence_weights(jax.lax.stop_gradient(check_teacher_logits(teacher_logits)), labels)


def weighted_kd(z_s: Array, teacher_logits: Array, weights: Array, *,
                temperature: float | Array = 4.0, reduction: str = "batchmean",
                mask: Array | None = None) -> Array:
  """``Σ_k Σ_b w_kb · KL_T,kb / (B · K)``, CA-MKD's weighted multi-teacher KD (EBKD and CA-MKD).

  ``KL_T,kb = T² Σ_c p_t (log p_t − log p_s)`` per example (CA-MKD `DistillKL(is_ca=True)`);
  ``reduction='mean'`` divides it by the number of classes, as in :func:`losses.kd_loss`. `teacher_logits`
  (K, B, C) are constants; `weights` (K, B) are used as given (gradients flow into them if they
  carry any). With `mask`, B becomes ``Σ mask`` and masked-out examples drop out. Note the 1/K:
  in CA-MKD's code, not in its paper's formula.
  """
  if reduction not in losses.REDUCTIONS:
    raise ValueError(f"weighted_kd reduction must be one of {losses.REDUCTIONS}, got {reduction!r}.")
  teacher_logits = jax.lax.stop_gradient(check_teacher_logits(teacher_logits))
  k, batch, classes = teacher_logits.shape
  if z_s.shape != (batch, classes):
    raise ValueError(f"weighted_kd: student logits {z_s.shape} do not match teacher logits "
                     f"{teacher_logits.shape} (teachers, batch, classes).")
  weights = jnp.asarray(weights)
  if weights.shape != (k, batch):
    raise ValueError(f"weighted_kd weights must have shape (teachers, batch) = ({k}, {batch}), got "
                     f"{weights.shape}.")
  kl = losses.kl_per_example(z_s, teacher_logits, temperature=temperature)                     # (K, B)
  if reduction == "mean":
    kl = kl / classes
  return losses.masked_mean(jnp.sum(weights * kl, axis=0), mask) / k


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
      w = (ebkd_weights(stack) if cfg.weighting == "ebkd"
           else camkd_weights(stack, batch.hard_labels()))
      return weighted_kd(zs, stack, w, temperature=t, reduction=cfg.reduction)
    per = jnp.stack([losses.kd_loss(zs, z, temperature=t, reduction=cfg.reduction,
                                    standardize=cfg.standardize) for z in zt])
    w = (jnp.full((len(zt),), 1.0 / len(zt)) if cfg.weighting == "aver"
         else batch.teacher_weights)
    return jnp.sum(w * per)


TERM = KD()
