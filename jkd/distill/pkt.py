"""PKT, probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), on pooled embeddings.

Source: RepDistiller `distiller_zoo/PKT.py` (from passalis/probabilistic_kt); weight 30000 as
RepDistiller runs it (`-b 30000`). Several teachers: Σ_k w_k PKT_k.
"""

import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Needs, Term


class PKT(Term):
  name = "pkt"
  source = "Passalis & Tefas, ECCV 2018; RepDistiller PKT.py"
  defaults = {"weight": 30000.0}
  per_run = ("weight",)

  def needs(self, cfg):
    return Needs(embedding=True)

  def loss(self, cfg, hp, batch):
    per = jnp.stack([losses.pkt_loss(batch.student.embedding, t.embedding)
                     for t in batch.teachers])
    return jnp.sum(batch.teacher_weights * per)


TERM = PKT()
