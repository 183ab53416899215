"""DKD, decoupled KD (Zhao et al., CVPR 2022): α·TCKD + β·NCKD, ramped in over `warmup` epochs.

Source: mdistiller `mdistiller/distillers/DKD.py` (defaults ALPHA 1, BETA 8, T 4, WARMUP 20; the
factor min(epoch / WARMUP, 1) with epochs counted from 1). Several teachers: Σ_k w_k DKD_k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Term

Array = jax.Array


DKD_GT_OFFSET = 1000.0   # DKD: mdistiller `logits / T - 1000.0 * gt_mask`


def _dkd_per_example(z_s: Array, z_t: Array, labels: Array, temperature) -> tuple[Array, Array]:
  losses.check_logits(z_s, z_t)
  labels = losses.check_labels(labels, z_s)
  z_t = jax.lax.stop_gradient(z_t)
  gt = jax.nn.one_hot(labels, z_s.shape[-1], dtype=jnp.bool_)

  def log_binary(z):
    # log [p_gt, Σ_{j≠gt} p_j] of p = softmax(z), both terms from log-sum-exps: the same values as
    # torch.log(cat_mask(softmax(z))) in normal ranges, but finite when a probability underflows.
    lse = jax.nn.logsumexp(z, axis=-1)
    log_gt = jnp.sum(jnp.where(gt, z, 0.0), axis=-1) - lse
    log_other = jax.nn.logsumexp(jnp.where(gt, -jnp.inf, z), axis=-1) - lse
    return jnp.stack([log_gt, log_other], axis=-1)

  zs, zt = z_s / temperature, z_t / temperature
  lb_s, lb_t = log_binary(zs), log_binary(zt)
  tckd = jnp.sum(jnp.exp(lb_t) * (lb_t - lb_s), axis=-1)
  lq_s = jax.nn.log_softmax(zs - DKD_GT_OFFSET * gt, axis=-1)
  lq_t = jax.nn.log_softmax(zt - DKD_GT_OFFSET * gt, axis=-1)
  nckd = jnp.sum(jnp.exp(lq_t) * (lq_t - lq_s), axis=-1)
  t2 = temperature ** 2
  return t2 * tckd, t2 * nckd


def dkd_loss(z_s: Array, z_t: Array, labels: Array, *, alpha: float | Array, beta: float | Array,
             temperature: float | Array, mask: Array | None = None) -> Array:
  """Decoupled KD ``α · TCKD + β · NCKD`` (mdistiller `dkd_loss`).

  With ``p = softmax(z / T)`` and the binary vector ``b = [p_gt, Σ_{j≠gt} p_j]``:
  ``TCKD = T² KL(b_t ‖ b_s)``; ``NCKD = T² KL(q_t ‖ q_s)`` with ``q = softmax(z / T − 1000 · onehot_gt)``
  (the 1000 is subtracted AFTER dividing by T, so the target class drops out). Both are summed over
  classes and averaged over examples (``kl_div(size_average=False) / B`` = 'batchmean').
  `labels`: int (B,). No warm-up here: mdistiller multiplies by ``min(epoch / WARMUP, 1)`` outside.
  Defaults there: α=1, β=8, T=4.

  NaN/inf safety: mdistiller takes ``torch.log`` of the binary probabilities without eps, which is
  −inf (and the loss inf or NaN) when one underflows. Here ``log b`` is computed as log-sum-exps
  of the logits (``log p_gt = z_gt − lse(z)``, ``log Σ_{j≠gt} p_j = lse(z_{j≠gt}) − lse(z)``):
  mathematically the same, equal to float rounding in normal ranges, and finite (with finite
  gradients) for any finite logits. NCKD uses log-softmax, as mdistiller does.
  """
  tckd, nckd = _dkd_per_example(z_s, z_t, labels, temperature)
  return losses.masked_mean(alpha * tckd + beta * nckd, mask)


class DKD(Term):
  name = "dkd"
  source = "Zhao et al., CVPR 2022; megvii-research/mdistiller DKD.py"
  defaults = {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0}
  per_run = ("weight", "alpha", "beta", "temperature", "warmup")
  ranges = {"temperature": "> 0", "alpha": ">= 0", "beta": ">= 0", "warmup": ">= 0"}

  def loss(self, cfg, hp, batch):
    y = batch.hard_labels()
    per = jnp.stack([dkd_loss(batch.student.logits, t.logits, y, alpha=hp["alpha"],
                                     beta=hp["beta"], temperature=hp["temperature"])
                     for t in batch.teachers])
    epoch1 = batch.epoch.astype(jnp.float32) + 1.0
    ramp = jnp.where(hp["warmup"] > 0, jnp.minimum(epoch1 / jnp.maximum(hp["warmup"], 1e-9), 1.0),
                     1.0)
    return ramp * jnp.sum(batch.teacher_weights * per)


TERM = DKD()
