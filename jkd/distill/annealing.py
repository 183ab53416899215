"""Annealing-KD (Jafari et al., EACL 2021): regress onto annealed teacher logits, then CE.

Phase 1 (epochs < `phase1_epochs`, 0 = half the training): `MSE(z_s, Φ(T)·Σ_k w_k z_k)` with
Φ(T) = 1 − (T − 1)/τ_max and T stepping from `tau_max` down to 1; phase 2: hard-label CE only.
The term is the whole schedule, CE phase included, so it is listed without 'ce'. (The lab's
other "annealing", initialising the KD student from the CE-trained one, is the stage's
`distill.init_from_scratch`.)
"""

import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Term, TermError


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
      losses.annealing_temperature(0, tau_max=int(cfg.tau_max), phase1_epochs=phase1(cfg, epochs))
    except ValueError as e:
      raise TermError(f"loss.annealing: {e}") from None

  def loss(self, cfg, hp, batch):
    p1 = phase1(cfg, batch.epochs)
    phi = losses.annealing_phi(batch.epoch, tau_max=int(cfg.tau_max), phase1_epochs=p1)
    target = sum(batch.teacher_weights[k] * t.logits for k, t in enumerate(batch.teachers))
    mse = losses.annealing_kd_loss(batch.student.logits, target, phi)
    hard = losses.cross_entropy(batch.student.logits, batch.labels)
    return jnp.where(batch.epoch < p1, mse, hard)


TERM = Annealing()
