"""DIST, KD from a stronger teacher (Huang et al., NeurIPS 2022): τ²·(β·inter + γ·intra).

Source: hunto/image_classification_sota `lib/models/losses/dist_kd.py`; its trainer weights the
term by 2 (`kd_loss_weight`), the default weight here; τ = 4 is its CIFAR setting (`dist_t4`),
τ = 1 its ImageNet one. Several teachers: Σ_k w_k DIST_k.
"""

import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Term


class DIST(Term):
  name = "dist"
  source = "Huang et al., NeurIPS 2022; hunto/DIST_KD dist_kd.py"
  defaults = {"weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0}
  per_run = ("weight", "beta", "gamma", "temperature")
  ranges = {"temperature": "> 0", "beta": ">= 0", "gamma": ">= 0"}

  def loss(self, cfg, hp, batch):
    per = jnp.stack([losses.dist_loss(batch.student.logits, t.logits, beta=hp["beta"],
                                      gamma=hp["gamma"], temperature=hp["temperature"])
                     for t in batch.teachers])
    return jnp.sum(batch.teacher_weights * per)


TERM = DIST()
