"""SimKD, knowledge distillation with the reused teacher classifier (Chen et al., CVPR 2022).

Source: DefangChen/SimKD `models/util.py: SimKD` (alignment, projector, teacher classifier),
`train_student.py` and `helper/loops.py` ('simkd': train and validate), `scripts/run_distill.sh`
(`-c 0 -d 0 -b 1`: the MSE alone, no CE and no KD; list only 'simkd' to run it so).

The student's last stage map and the teacher's are aligned (whichever is larger spatially is
adaptive-average-pooled to the other's size), the student's goes through the projector
(Conv1×1 – BN – ReLU – Conv3 – BN – ReLU – Conv1×1 – BN – ReLU, `factor` f: width t/f) and the
loss is MSE(P(source), target). The teacher's map is the one its classifier pools, as the
authors' `feat_t[-2]`: for a WRN teacher (whose stage maps jkd takes before the final BN-ReLU)
act(batch_norm(map)) in eval mode (`jkd.models.head`). AT INFERENCE the student predicts
`teacher fc(pool(P(aligned student map)))`: the teacher's classifier replaces the student's own
fc (unused). `jkd.engine.train.make_evaluate` does this through `predict`.

Trainable: the projector (params and BatchNorm statistics, per run). Non-trainable state: a copy
of the teacher's classifier head (its `fc`, and for a WRN its final `batch_norm`) taken from the
run's teacher at init. Both are kept at inference (`jkd.engine.checkpoint.restore_run(...,
distill=True)` returns them). `teacher` picks whose classifier is reused (0-based, in
`distill.teachers` order; SimKD has one teacher); it must have the student's rank.
"""

import jax.numpy as jnp

from jkd.distill import fitnet, heads
from jkd.distill.term import LAST, Needs, Term, TermError, last_map, require_teacher_variables
from jkd.models import head as head_lib


def _source(f_s, t_spatial):
  """The student side of `heads.simkd_align` (pooled to the teacher's size when larger)."""
  return heads.adaptive_avg_pool(f_s, t_spatial) if f_s.shape[1] > t_spatial[0] else f_s


class SimKD(Term):
  name = "simkd"
  source = "Chen et al., CVPR 2022; DefangChen/SimKD models/util.py SimKD"
  defaults = {"weight": 1.0, "factor": 2, "teacher": 0}
  per_run = ("weight",)
  ranges = {"factor": ">= 1", "teacher": ">= 0"}

  def check(self, cfg, teachers, student, epochs):
    if int(cfg.factor) != cfg.factor or cfg.factor < 1:
      raise TermError(f"loss.simkd.factor={cfg.factor!r} must be a positive integer")
    if int(cfg.teacher) != cfg.teacher or not 0 <= cfg.teacher < len(teachers):
      raise TermError(f"loss.simkd.teacher={cfg.teacher!r}: pick a teacher by its position in "
                      f"distill.teachers, 0..{len(teachers) - 1}")
    name, model = teachers[int(cfg.teacher)]
    if model.ndim != student.ndim:
      raise TermError(f"loss.simkd.teacher: teacher {name!r} is {model.ndim}-D but the student "
                      f"{student.ndim}-D; SimKD aligns maps of one rank; pick another teacher")

  def uses_teacher_weights(self, cfg):
    return False

  def needs(self, cfg):
    return Needs(stages=frozenset({LAST}))

  def predicts(self, cfg):
    return True

  def _projector(self, cfg, t_channels):
    if t_channels // int(cfg.factor) < 1:
      raise TermError(f"loss.simkd.factor={cfg.factor} exceeds the teacher's {t_channels} "
                      "channels; lower it")
    return heads.SimKDProjector(t_channels, int(cfg.factor))

  def init(self, cfg, key, student, teachers, info=None):
    i = int(cfg.teacher)
    require_teacher_variables(self.name, info, i + 1)
    t = last_map(teachers[i])
    src = _source(jnp.zeros(last_map(student).shape, jnp.float32), t.shape[1:-1])
    v = self._projector(cfg, t.shape[-1]).init(key, src, train=False)
    head = head_lib.of(info.teacher_models[i]).variables(info.teacher_variables[i])
    return {"params": {"projector": v["params"]},
            "batch_stats": {"projector": v["batch_stats"], "head": head}}

  def loss(self, cfg, hp, batch):
    i = int(cfg.teacher)
    head = head_lib.of(batch.teacher_models[i])
    hv = batch.batch_stats["head"]
    src, tgt = heads.simkd_align(last_map(batch.student),
                                 head.features(hv, last_map(batch.teachers[i])))
    p, new = self._projector(cfg, tgt.shape[-1]).apply(
        {"params": batch.params["projector"], "batch_stats": batch.batch_stats["projector"]},
        src, train=True, mutable=["batch_stats"])
    return fitnet.fitnet_loss(p, tgt), {"projector": new["batch_stats"], "head": hv}

  def predict(self, cfg, term_vars, student, info):
    i = int(cfg.teacher)
    t = last_map(info.teachers[i])
    src = _source(last_map(student), t.shape[1:-1])
    p = self._projector(cfg, t.shape[-1]).apply(
        {"params": term_vars["params"]["projector"],
         "batch_stats": term_vars["batch_stats"]["projector"]}, src, train=False)
    return head_lib.of(info.teacher_models[i]).logits(term_vars["batch_stats"]["head"], p)


TERM = SimKD()
