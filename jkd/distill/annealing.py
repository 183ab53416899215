"""Annealing-KD (Jafari et al., EACL 2021): regress onto annealed teacher logits, then CE.

Phase 1 (epochs < `phase1_epochs`, 0 = half the training): `MSE(z_s, Φ(T)·Σ_k w_k z_k)` with
Φ(T) = 1 − (T − 1)/τ_max and T stepping from `tau_max` down to 1; phase 2: hard-label CE only.
The term is the whole schedule, CE phase included, so it is listed without 'ce'. (The lab's
other "annealing", initialising the KD student from the CE-trained one, is the stage's
`distill.init_from_scratch`.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Example, Term, TermError

Array = jax.Array


def annealing_temperature(epoch: int | Array, *, tau_max: int = 10, phase1_epochs: int) -> Array:
  """The phase-1 temperature T at `epoch` (0-based): ``τ_max - ⌊epoch · τ_max / phase1_epochs⌋``.

  Phase 1 is split into τ_max equal blocks of epochs (block j uses T = τ_max - j), so T steps
  τ_max, τ_max - 1, ..., 1 and the last phase-1 epoch always has T = 1. From ``phase1_epochs`` on
  (phase 2) T stays 1. E.g. τ_max 10 over 20 epochs: epochs 0-1 T=10, 2-3 T=9, ..., 18-19 T=1.
  """
  if tau_max < 1:
    raise ValueError(f"annealing tau_max must be >= 1, got {tau_max}.")
  if phase1_epochs < tau_max:
    raise ValueError(f"annealing phase1_epochs ({phase1_epochs}) must be >= tau_max ({tau_max}) so "
                     "every temperature gets at least one epoch; raise phase1_epochs or lower tau_max.")
  epoch = jnp.minimum(jnp.asarray(epoch, jnp.int32), phase1_epochs - 1)
  return tau_max - (epoch * tau_max) // phase1_epochs


def annealing_phi(epoch: int | Array, *, tau_max: int = 10, phase1_epochs: int) -> Array:
  """``Φ(T) = 1 - (T - 1) / τ_max`` with T from :func:`annealing_temperature`: 1/τ_max ... 1."""
  temperature = annealing_temperature(epoch, tau_max=tau_max, phase1_epochs=phase1_epochs)
  return 1.0 - (temperature - 1).astype(jnp.float32) / tau_max


def annealing_kd_loss(student_logits: Array, teacher_logits: Array, phi: float | Array, *,
                      mask: Array | None = None) -> Array:
  """Annealing-KD phase 1: ``MSE(z_s, Φ · z_t)``, mean over classes and (masked) examples."""
  losses.check_logits(student_logits, teacher_logits)
  target = phi * jax.lax.stop_gradient(teacher_logits)
  per_example = jnp.mean((student_logits - target) ** 2, axis=-1)
  return losses.masked_mean(per_example, mask)


def phase1(cfg, epochs: int) -> int:
  return int(cfg.phase1_epochs) or max(epochs // 2, 1)


class Annealing(Term):
  name = "annealing"
  source = "Jafari et al., EACL 2021"
  defaults = {"weight": 1.0, "tau_max": 10, "phase1_epochs": 0}
  per_run = ("weight",)

  def check(self, cfg, teachers, student, epochs):
    if int(cfg.tau_max) < 1 or int(cfg.phase1_epochs) < 0:
      raise TermError(f"loss.annealing: tau_max={cfg.tau_max} must be >= 1 and phase1_epochs="
                      f"{cfg.phase1_epochs} >= 0")
    try:
      annealing_temperature(0, tau_max=int(cfg.tau_max), phase1_epochs=phase1(cfg, epochs))
    except ValueError as e:
      raise TermError(f"loss.annealing: {e}") from None

  def loss(self, cfg, hp, batch):
    p1 = phase1(cfg, batch.epochs)
    phi = annealing_phi(batch.epoch, tau_max=int(cfg.tau_max), phase1_epochs=p1)
    target = sum(batch.teacher_weights[k] * t.logits for k, t in enumerate(batch.teachers))
    mse = annealing_kd_loss(batch.student.logits, target, phi)
    hard = losses.cross_entropy(batch.student.logits, batch.labels)
    return jnp.where(batch.epoch < p1, mse, hard)


  def example(self):
    return Example(config={"tau_max": 1}, epoch=0)     # phase 1, where the teachers count


TERM = Annealing()
