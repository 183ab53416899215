"""DIST, KD from a stronger teacher (Huang et al., NeurIPS 2022): τ²·(β·inter + γ·intra).

Source: hunto/image_classification_sota `lib/models/losses/dist_kd.py`; its trainer weights the
term by 2 (`kd_loss_weight`), the default weight here; τ = 4 is its CIFAR setting (`dist_t4`),
τ = 1 its ImageNet one. Several teachers: Σ_k w_k DIST_k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Term

Array = jax.Array


DIST_EPS = 1e-8          # DIST: added to the cosine denominator (dist_kd.py `cosine_similarity`)


def _pearson(a: Array, b: Array, w: Array | None) -> Array:
  """Pearson correlation of the rows of a, b (N, M) over M (weights `w` (M,)), DIST's eps added."""
  if w is None:
    ac = a - jnp.mean(a, axis=1, keepdims=True)
    bc = b - jnp.mean(b, axis=1, keepdims=True)
  else:
    keep = w > 0
    total = jnp.sum(w)
    total = jnp.where(total > 0, total, 1.0)
    a, b = jnp.where(keep, a, 0.0), jnp.where(keep, b, 0.0)
    root = jnp.sqrt(w)
    ac = jnp.where(keep, (a - jnp.sum(w * a, axis=1, keepdims=True) / total) * root, 0.0)
    bc = jnp.where(keep, (b - jnp.sum(w * b, axis=1, keepdims=True) / total) * root, 0.0)
  num = jnp.sum(ac * bc, axis=1)
  return num / (losses.safe_norm(ac, 1, False) * losses.safe_norm(bc, 1, False) + DIST_EPS)


def dist_loss(z_s: Array, z_t: Array, *, beta: float | Array, gamma: float | Array,
              temperature: float | Array, mask: Array | None = None) -> Array:
  """DIST ``τ² · (β · inter + γ · intra)`` on ``Y = softmax(z / τ)`` (B, C).

  ``inter = 1 − mean_i pearson(Ys[i, :], Yt[i, :])`` (per example, over classes);
  ``intra = 1 − mean_c pearson(Ys[:, c], Yt[:, c])`` (per class, over the batch). As in the authors'
  code the Pearson correlation is the cosine of the centred vectors, ``Σ a·b / (‖a‖‖b‖ + 1e-8)``
  (eps added, not a clamp). Their trainer multiplies the loss by ``kd_loss_weight = 2`` outside;
  ImageNet uses β=γ=τ=1, CIFAR τ=4.

  `mask`: inter is a masked mean over examples. The intra term correlates over the batch, so a
  masked-out example is removed from it altogether: the batch means and the sums are weighted by the
  mask (a weighted Pearson correlation, ``Σ w (a − ā_w)(b − b̄_w)``); for a 0/1 mask this is exactly
  the intra term of the real examples alone.

  Gradients: the correlation is scale-free, so where a centred row is (nearly) zero — e.g. a
  student whose logits are all equal — the gradient is of order 1/(‖centred row‖ + 1e-8), up to
  ~1e7 at an exactly uniform softmax; PyTorch's autograd gives the same for the authors' code.
  """
  losses.check_logits(z_s, z_t)
  z_t = jax.lax.stop_gradient(z_t)
  y_s = jax.nn.softmax(z_s / temperature, axis=-1)
  y_t = jax.nn.softmax(z_t / temperature, axis=-1)
  w = None if mask is None else losses.check_mask(mask, z_s.shape[0])
  inter = 1.0 - losses.masked_mean(_pearson(y_s, y_t, None), mask)
  intra = 1.0 - jnp.mean(_pearson(y_s.T, y_t.T, w))
  return temperature ** 2 * (beta * inter + gamma * intra)


class DIST(Term):
  name = "dist"
  source = "Huang et al., NeurIPS 2022; hunto/DIST_KD dist_kd.py"
  defaults = {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}
  per_run = ("weight", "beta", "gamma", "temperature")
  ranges = {"temperature": "> 0", "beta": ">= 0", "gamma": ">= 0"}

  def loss(self, cfg, hp, batch):
    per = jnp.stack([dist_loss(batch.student.logits, t.logits, beta=hp["beta"],
                                      gamma=hp["gamma"], temperature=hp["temperature"])
                     for t in batch.teachers])
    return jnp.sum(batch.teacher_weights * per)


TERM = DIST()
