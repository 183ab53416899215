"""PKT, probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), on pooled embeddings.

Source: RepDistiller `distiller_zoo/PKT.py` (from passalis/probabilistic_kt); weight 30000 as
RepDistiller runs it (`-b 30000`). Several teachers: Σ_k w_k PKT_k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Needs, Term

Array = jax.Array


PKT_EPS = 1e-7           # PKT: RepDistiller distiller_zoo/PKT.py `cosine_similarity_loss`


def pkt_loss(e_s: Array, e_t: Array, mask: Array | None = None) -> Array:
  """Probabilistic KT on embeddings (B, D_s), (B, D_t) (the dimensions may differ).

  ``x ← x / (‖x‖ + 1e-7)`` (NaN → 0), ``K = (x xᵀ + 1) / 2``, ``P = K / rowsum(K)`` (diagonal kept),
  ``L = mean_{i,j} P_t,ij · log((P_t,ij + 1e-7) / (P_s,ij + 1e-7))`` — a mean over B² entries. The
  weight in RepDistiller/mdistiller is 30000 (outside).

  `mask`: masked-out examples are removed from the kernels (rows and columns), each real row is
  normalised over the real columns, and entry (i, j) is weighted ``w_i w_j / (Σ w)²``. For a 0/1 mask
  this is PKT on the real examples alone.
  """
  batch = e_s.shape[0]
  if e_t.shape[0] != batch:
    raise ValueError(f"pkt_loss: student {e_s.shape} and teacher {e_t.shape} batch sizes differ.")
  w = losses.mask_weights(mask, batch)
  pair = w[:, None] * w[None, :]
  keep = pair > 0

  def probabilities(x):
    x = x.reshape(batch, -1)
    x = x / (losses.safe_norm(x) + PKT_EPS)
    x = jnp.where(jnp.isnan(x), 0.0, x)
    k = jnp.where(keep, (jnp.matmul(x, x.T, precision=losses.HIGHEST) + 1.0) / 2.0, 0.0)
    return losses.safe_div(k, jnp.sum(k, axis=1, keepdims=True))

  p_s, p_t = probabilities(e_s), probabilities(jax.lax.stop_gradient(e_t))
  terms = p_t * jnp.log((p_t + PKT_EPS) / (p_s + PKT_EPS))
  total = jnp.sum(w)
  return jnp.sum(jnp.where(keep, pair * terms, 0.0)) / jnp.where(total > 0, total, 1.0) ** 2


class PKT(Term):
  name = "pkt"
  source = "Passalis & Tefas, ECCV 2018; RepDistiller PKT.py"
  defaults = {"weight": 30000.0}
  per_run = ("weight",)

  def needs(self, cfg):
    return Needs(embedding=True)

  def loss(self, cfg, hp, batch):
    per = jnp.stack([pkt_loss(batch.student.embedding, t.embedding)
                     for t in batch.teachers])
    return jnp.sum(batch.teacher_weights * per)


TERM = PKT()
