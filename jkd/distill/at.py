"""AT, attention transfer (Zagoruyko & Komodakis, ICLR 2017): Σ_layers mean((a_s − a_t)²).

Source: RepDistiller `distiller_zoo/AT.py` (p = 2, β = 1000, stages 1-3, the larger map pooled to
the smaller). An attention map is spatial, so only teachers of the student's rank contribute (a
2-D image teacher has no 1-D attention map): Σ_k w_k AT_k over those; `check` refuses a stage
where none is.
"""

import jax.numpy as jnp

from jkd import losses
from jkd.distill.term import Needs, Term, TermError, layers_key


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
        total = total + batch.teacher_weights[k] * losses.at_loss(student, teach)
    return total


TERM = AT()
