"""Demo of the whole distillation pipeline on the embedded smartwatch data (`watch`, 10 subjects,
7 exercises, 6 channels), a few minutes on a 2-core CPU:

  python -m jkd.main --config=configs/demo.py --workdir=W

Stages: a WRN16-1 signal teacher, a small 2-D WRN10-1 teacher on 16 x 16 GADF images (S = 16, not
the lab's 64: a 64 x 64 image teacher costs ~2 s per batch-32 step per run on such a CPU), both
trained 15 epochs; a WRN10-1 student from scratch, then the dual-teacher KD student initialised
from it, with and without the SP term (a sweep over β, both points trained in the same program as
the folds), 5 epochs each. 5 folds of 2 subjects each, one trial, non-overlapping windows:
numbers to see the pipeline work, not to cite. The lab's settings are in configs/pamap_spkd.py;
every row of the lab's table at demo scale is configs/demo_table.py.
"""

import jkd.data
from jkd import pipeline


def get_config():
  config = pipeline.base(jkd.data.default_config("watch"))
  config.data.step = 100             # non-overlapping 2 s windows: half the demo's work
  config.data.num_folds = 5          # 2 subjects per fold: 5 paired folds for the KD-gain test
  config.train.epochs = 5
  config.train.batch_size = 64
  config.train.checkpoint_every = 5
  config.optim.lr = 0.05
  config.optim.schedule = "cosine"   # the lab's step schedule needs more epochs than a demo has
  config.teachers.signal.model.name = "wrn16_1"
  config.teachers.image.model.name = "wrn10_1"
  config.teachers.image.model.image_size = 16
  config.teachers.image.model.gaf_method = "difference"   # GADF: better than GASF at 16 x 16 here
  # Teachers worth learning from: trained 3x longer than the students (the signal teacher with
  # mixup, which kept it from overfitting the 8 training subjects).
  for t in ("signal", "image"):
    config.stages[f"teacher_{t}"].train.epochs = 15
  config.stages.teacher_signal.augment.mixup = 0.2
  config.stages.student_scratch.model.name = "wrn10_1"
  kd = config.stages.student_kd
  pipeline.lab_loss(kd.loss, lam=0.9, alpha=0.3, beta=200.0, temperature=4.0)
  kd.sweep = {"loss": {"sp": {"weight": (0.0, 200.0)}}}   # KD alone, and KD + SP at the lab's β
  return config
