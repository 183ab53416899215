"""GENEActiv distillation (docs/protocol.md §1, §8): GAF + signal teachers -> SP-KD WRN16-1 student.

  python -m jkd.main --config=configs/geneactiv_spkd.py --workdir=W --config.data.path=DIR
  python -m jkd.main --config=configs/geneactiv_spkd.py:7,500 ...     (classes, window)
  python -m jkd.main --config=configs/geneactiv_spkd.py:14,1000 ...

Where the numbers come from:
  data        wrist accelerometer, 3 channels, 7- or 14-class label sets, windows of 1000 or 500
              samples (docs/protocol.md §6.3), subject-grouped 5 folds (152 subjects: not LOSO).
  models      WRN16-1 teachers (signal; GASF S = 64 per channel) and WRN16-1 student (§8 reports
              WRN16-1: scratch 89.29 / 86.83, SP-KD 90.99 / 89.39 for windows 1000 / 500).
  optim       the lab's SGD schedule, batch 128, 200 epochs, 3 trials (§5).
  loss        λ 0.99, T 4 (§4), α 0.5 (middle of §4's range), β = 700 on GENEActiv (§4 sp_param),
              KD reduction 'mean' (the lab's KLDivLoss()).
"""

import jkd.data
from jkd import pipeline


def get_config(arg: str = "7,1000"):
  classes, window = (int(v) for v in arg.split(","))
  if classes not in (7, 14) or window not in (500, 1000):
    raise ValueError(f"configs/geneactiv_spkd.py:{arg}: use CLASSES,WINDOW with classes 7 or 14 "
                     "and window 500 or 1000")
  config = pipeline.base(jkd.data.default_config("geneactiv"))
  config.data.num_classes = classes
  config.data.window = window
  config.model.name = "wrn16_1"
  config.train.epochs = 200
  config.train.batch_size = 128
  config.train.seeds = 3
  config.teachers.image.model.image_size = 64
  # Evaluation of 9+ runs at once on 64 x 64 x C images: im2col of a 512-window batch is ~3 GB per
  # run, so the image stage evaluates in batches of 128.
  config.stages.teacher_image.train.eval_batch_size = 128
  pipeline.lab_loss(config.stages.student_kd.loss, lam=0.99, alpha=0.5, beta=700.0)
  return config
