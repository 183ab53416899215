"""Focal loss `-(1 - p_t)^γ log p_t` (Lin et al., ICCV 2017), the hard-label term of the ECG nets."""

from jkd import losses
from jkd.distill.term import Term


class Focal(Term):
  name = "focal"
  source = "Lin et al., ICCV 2017"
  defaults = {"weight": 1.0, "gamma": 2.0}
  per_run = ("weight", "gamma")
  ranges = {"gamma": ">= 0"}

  reads_teachers = False

  def uses_teacher_weights(self, cfg):
    return False

  def loss(self, cfg, hp, batch):
    return losses.focal_loss(batch.student.logits, batch.labels, gamma=hp["gamma"])


TERM = Focal()
