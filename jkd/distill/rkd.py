"""RKD, relational KD (Park et al., CVPR 2019): 25·distance + 50·angle on pooled embeddings.

Source: RepDistiller `distiller_zoo/RKD.py` (mdistiller's RKD.py is the same); run there as CE +
RKD. Student and teacher embeddings may differ in width. Several teachers: Σ_k w_k RKD_k.
"""

import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Needs, Term


class RKD(Term):
  name = "rkd"
  source = "Park et al., CVPR 2019; RepDistiller RKD.py"
  defaults = {"weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}
  per_run = ("weight", "distance_weight", "angle_weight")
  ranges = {"distance_weight": ">= 0", "angle_weight": ">= 0"}

  def needs(self, cfg):
    return Needs(embedding=True)

  def loss(self, cfg, hp, batch):
    per = jnp.stack([losses.rkd_loss(batch.student.embedding, t.embedding,
                                     distance_weight=hp["distance_weight"],
                                     angle_weight=hp["angle_weight"]) for t in batch.teachers])
    return jnp.sum(batch.teacher_weights * per)


TERM = RKD()
