"""The lab's results tables as one pipeline: every row a distillation stage sharing the teachers.

`table(config, ...)` turns a pipeline config (`jkd.pipeline.base` on a data source) into the
table's rows (docs/protocol.md §8): three teachers trained once — `signal` (1-D WRN),
`gaf` (2-D WRN on GAF images) and `pi` (2-D WRN on persistence images) — the scratch student, and
one KD stage per row:

  kd_signal, kd_gaf, kd_pi      single-teacher KD (the lab's KD: KLDivLoss 'mean', λ)
  dcd, projection               from the signal teacher: the lab's KD + DCD (Giakoumoglou &
                                Stathaki), and CE + the role-of-the-projector loss (Miles &
                                Mikolajczyk, the lab's "projection"/"RP": its own KD at T = 1)
  pi_signal, gaf_signal         two teachers, weights (1 − α, α), plain init ("base")
  *_signal_ann, *_signal_ann_sp the same initialised from the scratch student ("annealing"),
                                without and with SP (β)
  three_ebkd, three_camkd       three teachers, per-sample weights of EBKD / CA-MKD (logit terms)
  three_mtkd_rl                 three teachers, MTKD-RL's agent-weighted KD and feature terms
  three, three_ann, three_ann_sp  three teachers over the lab's four weight triples (a zipped
                                sweep: one program each), base / annealing / annealing + SP

`baselines=True` adds the single-teacher baselines of the GENEActiv tables, each from the signal
teacher with its authors' weights: at, sp, dkd, dist, rkd, pkt, fitnet, crd, simkd, srrl, pefd;
eskd and full_kd, the lab's KD from one teacher (`eskd_teacher`, a 1-D model trained as
`teacher_signal_eskd`; the signal teacher when None) at its best-accuracy checkpoint (the lab's
ESKD; with `eskd_epoch`, its checkpoint after that epoch, Cho & Hariharan's) and at its last
("full KD"); and aver (GAF + signal, AVER's mean of KDs). CA-MKD's intermediate term (`camkd`)
and MTKD-RL's feature term align the student's last map with each teacher's, so they need
teachers of the student's rank: three_camkd uses CA-MKD's logit weighting only, and MTKD-RL
matches features with the signal teacher alone (its image teachers keep their logit weights).
Rows that differ only in per-run values of the same terms (the teacher weight triples) share one
program. Rows where one would switch a term off by a zero weight (KD against KD + SP) are
separate programs: a zero-weight term is still computed, and one program of KD and KD + SP
measured 1.50x the step time of the two programs together (docs/benchmarks.md).
"""

from __future__ import annotations

import ml_collections as mc

from jkd import pipeline
from jkd.engine import teachers as teachers_lib

# The lab's three-teacher weights (GAF, PI, signal).
THREE_WEIGHTS = ((.2, .2, .6), (.2, .3, .5), (.3, .2, .5), (.3, .3, .4))
BASELINES = ("at", "sp", "dkd", "dist", "rkd", "pkt", "fitnet", "crd", "simkd", "srrl", "pefd")


def _kd(config: mc.ConfigDict, name: str, teachers: tuple[str, ...], *, lam: float,
        alpha: float, beta: float = 0.0, init: bool = True) -> mc.ConfigDict:
  st = pipeline.add_kd_stage(config, name, teachers)
  pipeline.lab_loss(st.loss, lam=lam, alpha=alpha if len(teachers) == 2 else -1.0, beta=beta)
  st.distill.init_from_scratch = init
  return st


def table(config: mc.ConfigDict, *, lam: float = 0.99, alpha: float = 0.5, beta: float = 200.0,
          teacher_model: dict | None = None, image_size: int = 64, baselines: bool = False,
          eskd_teacher: dict | None = None, eskd_epoch: int = 0) -> mc.ConfigDict:
  """The rows on `config` (a `jkd.pipeline.base` config; its `student_kd` stage is replaced)."""
  m = {"name": "wrn16_1", **(teacher_model or {})}
  with config.unlocked():
    del config.teachers["image"], config.stages["teacher_image"], config.stages["student_kd"]
  config.teachers.signal.model.update({**m, "ndim": 1})
  pipeline.add_teacher(config, "gaf", {**m, "ndim": 2, "image": "gaf", "image_size": image_size})
  pipeline.add_teacher(config, "pi", {**m, "ndim": 2, "image": "pi", "image_size": image_size})
  for t in ("signal", "gaf", "pi"):
    _kd(config, f"kd_{t}", (t,), lam=lam, alpha=-1.0, init=False)
  st = _kd(config, "dcd", ("signal",), lam=lam, alpha=-1.0, init=False)
  st.loss.terms = (*st.loss.terms, "dcd")
  st = pipeline.add_kd_stage(config, "projection", ("signal",), ("ce", "projector"))
  st.distill.init_from_scratch = False
  for pair in ("pi", "gaf"):
    _kd(config, f"{pair}_signal", ("signal", pair), lam=lam, alpha=alpha, init=False)
    _kd(config, f"{pair}_signal_ann", ("signal", pair), lam=lam, alpha=alpha)
    _kd(config, f"{pair}_signal_ann_sp", ("signal", pair), lam=lam, alpha=alpha, beta=beta)
  three = ("gaf", "pi", "signal")
  for weighting in ("ebkd", "camkd"):
    st = _kd(config, f"three_{weighting}", three, lam=lam, alpha=-1.0, init=False)
    st.loss.kd.weighting = weighting
  st = pipeline.add_kd_stage(config, "three_mtkd_rl", three, ("ce", "mtkd_rl"))
  st.distill.init_from_scratch = False
  zipped = {"teachers": {n: {"weight": tuple(w[i] for w in THREE_WEIGHTS)}
                         for i, n in enumerate(three)}}
  st = _kd(config, "three", three, lam=lam, alpha=-1.0, init=False)
  st.sweep = {"zip": zipped}
  st = _kd(config, "three_ann", three, lam=lam, alpha=-1.0)
  st.sweep = {"zip": zipped}
  st = _kd(config, "three_ann_sp", three, lam=lam, alpha=-1.0, beta=beta)
  st.sweep = {"zip": zipped}
  if baselines:
    for term in BASELINES:
      # SimKD trains on its MSE alone (its authors' -c 0 -d 0); the others with CE
      st = pipeline.add_kd_stage(config, term, ("signal",),
                                 (term,) if term == "simkd" else ("ce", term))
      st.distill.init_from_scratch = False
      if term in ("at", "sp"):
        st.loss[term].layers = (1, 2, 3) if term == "at" else (3,)
    of = "signal"
    if eskd_teacher is not None:
      of = "signal_eskd"
      pipeline.add_teacher(config, of, {**config.teachers.signal.model.to_dict(), **eskd_teacher,
                                        "ndim": 1})
    if eskd_epoch:
      pipeline.add_early_teacher(config, f"{of}_early", of, eskd_epoch)
    else:
      config.teachers[f"{of}_early"] = teachers_lib.spec(config.teachers[of].model.to_dict(),
                                                         source=f"@{of}", which="best")
    _kd(config, "eskd", (f"{of}_early",), lam=lam, alpha=-1.0, init=False)
    _kd(config, "full_kd", (of,), lam=lam, alpha=-1.0, init=False)
    st = _kd(config, "aver", ("signal", "gaf"), lam=lam, alpha=-1.0, init=False)
    st.loss.kd.weighting = "aver"
  return config
