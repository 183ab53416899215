"""Hard-label cross-entropy (optionally label-smoothed, or with the lab's logit standardisation).

`standardize` applies TDA_KD's `z / std(z)` before the softmax (docs/protocol.md §4).
"""

from jkd import losses
from jkd.distill.term import Term


class CrossEntropy(Term):
  name = "ce"
  source = "softmax cross-entropy; TDA_KD (jeunsom/TDA_KD) for `standardize`"
  defaults = {"weight": 1.0, "label_smoothing": 0.0, "standardize": False}
  per_run = ("weight", "label_smoothing")
  ranges = {"label_smoothing": "[0, 1)"}

  reads_teachers = False

  def uses_teacher_weights(self, cfg):
    return False

  def loss(self, cfg, hp, batch):
    return losses.cross_entropy(batch.student.logits, batch.labels,
                                label_smoothing=hp["label_smoothing"], standardize=cfg.standardize)


TERM = CrossEntropy()
