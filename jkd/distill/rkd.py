"""RKD, relational KD (Park et al., CVPR 2019): 25·distance + 50·angle on pooled embeddings.

Source: RepDistiller `distiller_zoo/RKD.py` (mdistiller's RKD.py is the same); run there as CE +
RKD. Student and teacher embeddings may differ in width. Several teachers: Σ_k w_k RKD_k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Needs, Term

Array = jax.Array


RKD_PDIST_EPS = 1e-12    # RKD: RepDistiller distiller_zoo/RKD.py `pdist(eps=1e-12)`


def _huber(x: Array) -> Array:
  """`F.smooth_l1_loss` elementwise with beta = 1."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def _rkd_pdist(e: Array) -> Array:
  """RKD `pdist(squared=False)`: sqrt(clamp(‖e_i‖² + ‖e_j‖² − 2 e_i·e_j, 1e-12)), diagonal 0."""
  sq = jnp.sum(e * e, axis=-1)
  prod = jnp.matmul(e, e.T, precision=losses.HIGHEST)
  d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * prod, RKD_PDIST_EPS))
  return jnp.where(jnp.eye(e.shape[0], dtype=jnp.bool_), 0.0, d)


def _rkd_angles(e: Array) -> Array:
  """``a_ijk = <v_ij, v_ik>`` with ``v_ij = normalize(e_j − e_i)``, all B³ triplets."""
  v = losses.normalize_finite(e[None, :, :] - e[:, None, :])
  return jnp.einsum("ijd,ikd->ijk", v, v, precision=losses.HIGHEST)


def rkd_loss(e_s: Array, e_t: Array, *, distance_weight: float | Array,
             angle_weight: float | Array, mask: Array | None = None) -> Array:
  """Relational KD ``w_d · loss_d + w_a · loss_a`` on embeddings (B, D_s) and (B, D_t).

  As RepDistiller's `RKDLoss` (w_d=25, w_a=50 there): inputs are flattened to (B, D);
  ``d_ij = sqrt(clamp(‖e_i‖² + ‖e_j‖² − 2 e_i·e_j, 1e-12))`` with the diagonal 0, each matrix divided
  by the mean of its entries > 0; ``loss_d = smooth_l1(d_s, d_t)`` (Huber δ=1, mean over B²).
  ``v_ij = F.normalize(e_j − e_i)``, ``a_ijk = <v_ij, v_ik>``; ``loss_a = smooth_l1(a_s, a_t)``
  averaged over all B³ triplets, degenerate ones (j = i or k = i, zero on both sides) included.
  The teacher side is constant. If no distance is > 0 (one example), the distances stay 0 (the
  authors' mean of an empty set would be NaN).

  `mask`: an entry (i, j) has weight ``w_i w_j`` and a triplet ``w_i w_j w_k``, normalised by
  ``(Σ w)²`` and ``(Σ w)³``; the mean distance is over real pairs. For a 0/1 mask this is RKD on
  the real examples alone.

  Gradients are finite everywhere, but where two student embeddings coincide exactly,
  ``F.normalize(0)``'s gradient is 1/eps = 1e12 (PyTorch's too).
  """
  batch = e_s.shape[0]
  if e_t.shape[0] != batch:
    raise ValueError(f"rkd_loss: student {e_s.shape} and teacher {e_t.shape} batch sizes differ.")
  e_s = e_s.reshape(batch, -1)
  e_t = jax.lax.stop_gradient(e_t).reshape(batch, -1)
  w = losses.mask_weights(mask, batch)
  total = jnp.sum(w)
  total = jnp.where(total > 0, total, 1.0)
  pair = w[:, None] * w[None, :]
  keep = pair > 0

  def normalized_distance(e):
    d = _rkd_pdist(e)
    pos = keep & (d > 0)
    mean = losses.safe_div(jnp.sum(jnp.where(pos, pair * d, 0.0)), jnp.sum(jnp.where(pos, pair, 0.0)))
    return d / jnp.where(mean > 0, mean, 1.0)

  diff = normalized_distance(e_s) - normalized_distance(e_t)
  loss_d = jnp.sum(jnp.where(keep, pair * _huber(diff), 0.0)) / total ** 2
  triple = w[:, None, None] * pair[None, :, :]
  diff_a = _rkd_angles(e_s) - _rkd_angles(e_t)
  loss_a = jnp.sum(jnp.where(triple > 0, triple * _huber(diff_a), 0.0)) / total ** 3
  return distance_weight * loss_d + angle_weight * loss_a


class RKD(Term):
  name = "rkd"
  source = "Park et al., CVPR 2019; RepDistiller RKD.py"
  defaults = {"weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}
  per_run = ("weight", "distance_weight", "angle_weight")
  ranges = {"distance_weight": ">= 0", "angle_weight": ">= 0"}

  def needs(self, cfg):
    return Needs(embedding=True)

  def loss(self, cfg, hp, batch):
    per = jnp.stack([rkd_loss(batch.student.embedding, t.embedding,
                                     distance_weight=hp["distance_weight"],
                                     angle_weight=hp["angle_weight"]) for t in batch.teachers])
    return jnp.sum(batch.teacher_weights * per)


TERM = RKD()
