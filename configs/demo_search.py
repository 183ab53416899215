"""A KD stage whose hyper-parameters are searched, not gridded, on the embedded smartwatch data:

  python -m jkd.main --config=configs/demo_search.py --workdir=W

The teachers and the scratch student are those of configs/demo.py (trained once). The KD stage
draws 27 points with Optuna's TPE sampler from the lab's λ (the ce/kd weights (1 − λ, λ), a
simplex), α (the two teachers' split), β (the SP weight, log-uniform) and T (log-uniform), and
trains them with successive halving: all 27 for 1 epoch, the best 9 on validation accuracy for a
second, the best 3 to epoch 5 as the scratch student (each rung one program of its points x 5
folds; the survivors continue from their checkpoints). One of each fold's training subjects
validates: the choice reads validation accuracy only, test accuracy is reported.
W/student_kd/search.csv holds every point; W/report.md the chosen one.

From a fresh workdir it took 6 min 25 s wall on a 2-core CPU shared with other jobs (load 8-14;
366 s user CPU, 5.4 GB peak RSS; install excluded): the 135-run first rung runs the teachers
forward in every step (their cached outputs would not fit distill.cache_gb). It chose λ = 0.45,
α = 0.32, T = 1.3, β = 38: test accuracy 80.46 (final), 1.24 points below the scratch student
(paired over 5 folds, p = 0.09); 225 run-epochs against 675 for every point to the end.
"""

import os

from jkd import config as config_lib
from jkd import pipeline, search


def get_config():
  config = config_lib.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "demo.py"))
  config.data.num_val_subjects = 1    # per fold, one of its 8 training subjects validates
  kd = config.stages.student_kd
  pipeline.lab_loss(kd.loss, lam=0.9, alpha=0.3, beta=200.0, temperature=4.0)
  kd.sweep = {}
  kd.search = search.default_config(points=27, sampler="tpe", seed=0, waves=3)
  kd.search.space = {"loss": {"ce": {"weight": ("simplex",)}, "kd": {"weight": ("simplex",),
                                                                    "temperature": ("log", 1, 8)},
                              "alpha": ("uniform", 0, 1), "sp": {"weight": ("log", 10, 1000)}}}
  kd.search.halving.rungs = (1, 2)
  kd.search.halving.eta = 3
  return config
