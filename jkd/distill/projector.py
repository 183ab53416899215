"""The role of the projector (Miles & Mikolajczyk, AAAI 2024): a linear projector, batch
normalisation and a log-sum distance on pooled embeddings, plus KD at T = 1; the lab's
"projection" ("RP") row.

Source: roymiles/Simple-Recipe-Distillation `imagenet/torchdistill/losses/single.py`
(`OurDistillationLoss`), which the lab ran as is (its `PRLoss`, with CE weight 1). Per teacher k:
a Linear(d_s → d_k) projector P_k (PyTorch's default init, kernel and bias U(±1/sqrt(d_s))) on the
student's pooled embedding; both P_k(e_s) and the teacher's e_k go through BatchNorm1d(eps 1e-4,
affine=False) in training mode (batch statistics); the term is

    rep_weight · log Σ_{b,d} |BN(P_k e_s) − BN(e_k)|^power + kd_weight · KD_T(z_s, z_k)

(`projector_loss`; KD 'batchmean', T = 1), with the authors' rep_weight 2, power 4 and
kd_weight 1. The projectors are TRAINABLE (with the student, by its optimizer) and dropped at
inference. Several teachers: Σ_k w_k L_k.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import Needs, Term, TermError

Array = jax.Array


PROJECTOR_FLOOR = float(jnp.finfo(jnp.float32).tiny)   # the log's floor: log(0) would be −inf


def projector_loss(f_s_projected: Array, f_t: Array, *, power: float | Array = 4.0,
                   eps: float = 1e-4, mask: Array | None = None) -> Array:
  """``log Σ_{b,d} |BN(f̂_s) − BN(f_t)|^p`` on the projected student and the teacher rows (B, D).

  `OurDistillationLoss.forward_loss`: both sides go through their own ``BatchNorm1d(D, eps,
  affine=False)`` in training mode (each column standardised with the batch's mean and biased
  variance), the element-wise ``|difference|^p`` (p = 4) is summed over the batch and the
  features, and the log is taken (2 × this outside). A sum, not a mean: it depends on the
  batch size and width. `mask`: the statistics and the sum over the real rows only.

  Guard: the authors take the log without eps, so identical student and teacher rows give
  log 0 = −inf (and a NaN gradient). Here the sum is floored at float32's smallest normal
  number (``log`` ≈ −87.3, gradient 0 there); any sum above it is unchanged.
  """
  losses.check_same(f_s_projected, f_t, "projector_loss")
  f_t = jax.lax.stop_gradient(f_t)
  n = f_t.shape[0]
  w = losses.mask_weights(mask, n)[:, None]
  total = jnp.sum(w)

  def bn(x):
    x = x.reshape(n, -1)
    mean = jnp.sum(w * x, 0) / total
    var = jnp.sum(w * (x - mean) ** 2, 0) / total
    return (x - mean) * jax.lax.rsqrt(var + eps)

  diff = jnp.abs(bn(f_s_projected) - bn(f_t))
  return jnp.log(jnp.maximum(jnp.sum(w * diff ** power), PROJECTOR_FLOOR))


class Projector(Term):
  name = "projector"
  source = ("Miles & Mikolajczyk, AAAI 2024; roymiles/Simple-Recipe-Distillation "
            "imagenet/torchdistill/losses/single.py (OurDistillationLoss)")
  defaults = {"weight": 1.0, "rep_weight": 2.0, "power": 4.0, "kd_weight": 1.0,
              "temperature": 1.0, "bn_eps": 1e-4}
  per_run = ("weight", "rep_weight", "power", "kd_weight", "temperature")
  ranges = {"rep_weight": ">= 0", "power": "> 0", "kd_weight": ">= 0", "temperature": "> 0",
            "bn_eps": "> 0"}

  def check(self, cfg, teachers, student, epochs):
    e = cfg.bn_eps
    if isinstance(e, bool) or not isinstance(e, numbers.Real) or not e > 0:
      raise TermError(f"loss.projector.bn_eps={e!r} must be a positive number (the authors use "
                      "1e-4)")

  def needs(self, cfg):
    return Needs(embedding=True)

  def init(self, cfg, key, student, teachers, info=None):
    d_s = student.embedding.shape[-1]
    x = jnp.zeros(student.embedding.shape, jnp.float32)
    params = {str(k): heads.torch_linear(d_s, t.embedding.shape[-1]).init(
        jax.random.fold_in(key, k), x)["params"] for k, t in enumerate(teachers)}
    return {"params": params, "batch_stats": {}}

  def loss(self, cfg, hp, batch):
    e_s, z_s = batch.student.embedding, batch.student.logits
    per = []
    for k, t in enumerate(batch.teachers):
      f_s = heads.torch_linear(e_s.shape[-1], t.embedding.shape[-1]).apply({"params": batch.params[str(k)]},
                                                                 e_s)
      rep = projector_loss(f_s, t.embedding, power=hp["power"], eps=float(cfg.bn_eps))
      kd = losses.kd_loss(z_s, t.logits, temperature=hp["temperature"])
      per.append(hp["rep_weight"] * rep + hp["kd_weight"] * kd)
    return jnp.sum(batch.teacher_weights * jnp.stack(per))


TERM = Projector()
