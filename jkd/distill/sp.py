"""SP, similarity-preserving KD (Tung & Mori, ICCV 2019): Σ_layers ‖G_s − G_t‖²_F / b².

Source: RepDistiller `distiller_zoo/SP.py` (the last stage map, β = 3000); the lab's TGD code
sums it over the three WRN stages (`layers=(1, 2, 3)`, β = 200 on PAMAP2, 700 on GENEActiv) and
merges several teachers' Gram matrices as Σ_k w_k G_k BEFORE the row normalisation. Layer 4 is
the logits ("k = 4 representations"). `reduction='mean'` divides the layer sum by the number of
layers (TGD's `/3`). Student and teacher maps may differ in every axis but the batch, so a 2-D
image teacher teaches a 1-D student.
"""

from jkd import losses
from jkd.distill.term import Needs, Term, TermError, layers_key

LOGITS = 4


def pick(out, layers):
  return [out.logits if i == LOGITS else out.stages[i] for i in layers]


class SP(Term):
  name = "sp"
  source = "Tung & Mori, ICCV 2019; RepDistiller SP.py; jeunsom/TGD (multi-teacher Gram merge)"
  defaults = {"weight": 3000.0, "layers": (3,), "reduction": "sum"}
  per_run = ("weight",)

  def check(self, cfg, teachers, student, epochs):
    layers_key(cfg, "layers", self.name, (1, 2, 3, LOGITS))
    if cfg.reduction not in ("sum", "mean"):
      raise TermError(f"loss.sp.reduction={cfg.reduction!r} is not one of sum, mean")

  def needs(self, cfg):
    return Needs(stages=frozenset(set(cfg.layers) - {LOGITS}))

  def loss(self, cfg, hp, batch):
    layers = tuple(cfg.layers)
    return losses.sp_loss(pick(batch.student, layers), [pick(t, layers) for t in batch.teachers],
                          teacher_weights=batch.teacher_weights, layer_reduction=cfg.reduction)


TERM = SP()
