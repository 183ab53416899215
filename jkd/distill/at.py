"""AT, attention transfer (Zagoruyko & Komodakis, ICLR 2017): Σ_layers mean((a_s − a_t)²).

Source: RepDistiller `distiller_zoo/AT.py` (p = 2, β = 1000, stages 1-3, the larger map pooled to
the smaller). An attention map is spatial, so only teachers of the student's rank contribute (a
2-D image teacher has no 1-D attention map): Σ_k w_k AT_k over those; `check` refuses a stage
where none is.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Needs, Term, TermError, layers_key

Array = jax.Array


def _energy(features: Array) -> Array:
  """mean_c(F²) of (b, *spatial, C) -> (b, *spatial)."""
  return jnp.mean(features.astype(jnp.float32) ** 2, axis=-1)


def _resample(energy: Array, spatial: tuple[int, ...]) -> Array:
  """Resize a (b, *spatial') map: average-pool when every axis shrinks by an integer factor, else
  linear interpolation with half-pixel centres and clamped edges (jax.image.resize 'linear')."""
  src = energy.shape[1:]
  if src == spatial:
    return energy
  if all(s % d == 0 for s, d in zip(src, spatial)):
    shape = [energy.shape[0]]
    for d, s in zip(spatial, src):
      shape += [d, s // d]
    return jnp.mean(energy.reshape(shape), axis=tuple(range(2, 2 * len(spatial) + 1, 2)))
  return jax.image.resize(energy, (energy.shape[0], *spatial), method="linear", antialias=False)


def at_map(features: Array, spatial: tuple[int, ...] | None = None) -> Array:
  """Attention map of (b, *spatial, C): L2-normalise(mean_c(F²) flattened) -> (b, prod(spatial)).

  `spatial` resamples mean_c(F²) to that size first (see :func:`at_loss`).
  """
  energy = _energy(features)
  if spatial is not None:
    energy = _resample(energy, tuple(spatial))
  return losses.l2_normalize(energy.reshape(energy.shape[0], -1))


def at_loss(student_feats: Array | Sequence[Array], teacher_feats: Array | Sequence[Array], *,
            beta: float | Array = 1.0, mask: Array | None = None) -> Array:
  """Attention transfer ``β · Σ_layers mean((at_s − at_t)²)`` (mean over examples and positions).

  Channel counts may differ. When spatial sizes differ, the teacher's mean_c(F²) map is resampled
  to the student's size before normalisation: average-pooled when each axis is an integer multiple
  of the student's (e.g. 100 -> 50), linearly interpolated otherwise. Maps of different spatial rank
  (a 2-D image teacher for a 1-D student) raise a ValueError: use :func:`sp_loss` for those.
  """
  student_feats, teacher_feats = losses.as_list(student_feats), losses.as_list(teacher_feats)
  if len(student_feats) != len(teacher_feats):
    raise ValueError(f"at_loss: the student gives {len(student_feats)} feature maps but the teacher "
                     f"{len(teacher_feats)}; pass the same chosen layers for both.")
  total = 0.0
  for fs, ft in zip(student_feats, teacher_feats):
    if fs.ndim != ft.ndim:
      raise ValueError(f"at_loss needs student and teacher maps of the same spatial rank, got student "
                       f"{fs.shape} and teacher {ft.shape}; for a 2-D (image) teacher and a 1-D "
                       "student use sp_loss, which compares batch similarities of any shapes.")
    spatial = fs.shape[1:-1]
    diff = at_map(fs) - at_map(jax.lax.stop_gradient(ft), spatial)
    total = total + losses.masked_mean(jnp.mean(diff * diff, axis=-1), mask)
  return beta * total


class AT(Term):
  name = "at"
  source = "Zagoruyko & Komodakis, ICLR 2017; RepDistiller AT.py"
  defaults = {"weight": 1000.0, "layers": (1, 2, 3)}
  per_run = ("weight",)

  def check(self, cfg, teachers, student, epochs):
    layers_key(cfg, "layers", self.name)
    if not any(m.ndim == student.ndim for _, m in teachers):
      raise TermError(f"loss.at: no teacher has the student's rank ({student.ndim}-D), so there is "
                      "no attention map to transfer; add such a teacher or drop 'at'")

  def needs(self, cfg):
    return Needs(stages=frozenset(cfg.layers))

  def loss(self, cfg, hp, batch):
    layers = tuple(cfg.layers)
    student = [batch.student.stages[i] for i in layers]
    total = jnp.float32(0.0)
    for k, t in enumerate(batch.teachers):
      teach = [t.stages[i] for i in layers]
      if all(a.ndim == b.ndim for a, b in zip(teach, student)):
        total = total + batch.teacher_weights[k] * at_loss(student, teach)
    return total


TERM = AT()
