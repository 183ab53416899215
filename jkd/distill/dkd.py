"""DKD, decoupled KD (Zhao et al., CVPR 2022): α·TCKD + β·NCKD, ramped in over `warmup` epochs.

Source: mdistiller `mdistiller/distillers/DKD.py` (defaults ALPHA 1, BETA 8, T 4, WARMUP 20; the
factor min(epoch / WARMUP, 1) with epochs counted from 1). Several teachers: Σ_k w_k DKD_k.
"""

import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Term


class DKD(Term):
  name = "dkd"
  source = "Zhao et al., CVPR 2022; megvii-research/mdistiller DKD.py"
  defaults = {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0}
  per_run = ("weight", "alpha", "beta", "temperature", "warmup")
  ranges = {"temperature": "> 0", "alpha": ">= 0", "beta": ">= 0", "warmup": ">= 0"}

  def loss(self, cfg, hp, batch):
    y = batch.hard_labels()
    per = jnp.stack([losses.dkd_loss(batch.student.logits, t.logits, y, alpha=hp["alpha"],
                                     beta=hp["beta"], temperature=hp["temperature"])
                     for t in batch.teachers])
    epoch1 = batch.epoch.astype(jnp.float32) + 1.0
    ramp = jnp.where(hp["warmup"] > 0, jnp.minimum(epoch1 / jnp.maximum(hp["warmup"], 1e-9), 1.0),
                     1.0)
    return ramp * jnp.sum(batch.teacher_weights * per)


TERM = DKD()
