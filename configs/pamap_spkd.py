"""The lab's PAMAP2 distillation (docs/protocol.md §1): GAF + signal teachers -> annealing-
initialised dual-teacher SP-KD WRN16-1 student, 9 LOSO folds x 3 trials, every stage 200 epochs.

  python -m jkd.main --config=configs/pamap_spkd.py --workdir=W --config.data.path=PAMAP2_DIR

Where the numbers come from (sections of docs/protocol.md):
  data        PAMAP2 Protocol, 12 activities, 9 subjects, window 100 (§6.1; jkd.data.pamap2
              defaults reproduce the lab's preprocessing), leave-one-subject-out.
  teachers    WRN16-1 on the 40-channel signal and WRN16-1 on GASF images, S = 64, one image per
              channel (§8 reports these two: 85.27 and 81.44 %; §6.4 GAF).
  student     WRN16-1 1-D (§8: scratch 82.99 ± 2.50, SP-KD 88.35 ± 1.89).
  optim       SGD 0.9, coupled wd 1e-4, batch 128, 200 epochs, lr 0.05/0.01/0.001/1e-4 (§5), seeds
              1234-1236 (3 trials, §1).
  loss        λ = 0.99 (loss.ce.weight 0.01, loss.kd.weight 0.99) and T = 4 (§4 "typical: λ 0.99
              or 0.9, T 4"); α = 0.5, the middle of §4's 0.1-0.9 range (the image teacher's
              weight; configs/pamap_spkd_sweep.py scans it); β = loss.sp.weight = 200 on PAMAP2
              (§4 sp_param); SP over the three stage outputs, summed (§4); KD reduction 'mean' =
              PyTorch KLDivLoss() as the lab's code (§4, their λ/β assume it).
  init        the KD student starts from the CE student of the same fold and seed (§1 step 3).
"""

import jkd.data
from jkd import pipeline


def get_config():
  config = pipeline.base(jkd.data.default_config("pamap2"))
  config.model.name = "wrn16_1"
  config.train.epochs = 200
  config.train.batch_size = 128
  config.train.seeds = 3
  config.teachers.signal.model.name = "wrn16_1"
  config.teachers.image.model.name = "wrn16_1"
  config.teachers.image.model.image_size = 64
  # Evaluation of 9+ runs at once on 64 x 64 x C images: im2col of a 512-window batch is ~3 GB per
  # run, so the image stage evaluates in batches of 128.
  config.stages.teacher_image.train.eval_batch_size = 128
  config.stages.student_scratch.model.name = "wrn16_1"
  kd = config.stages.student_kd
  kd.distill.teachers = ("signal", "image")   # weights (1 - α, α)
  kd.distill.init_from_scratch = True
  pipeline.lab_loss(kd.loss, lam=0.99, alpha=0.5, beta=200.0, temperature=4.0)
  return config
