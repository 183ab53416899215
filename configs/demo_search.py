"""A KD stage whose hyper-parameters are searched, not gridded, on the embedded smartwatch data:

  python -m jkd.main --config=configs/demo_search.py --workdir=W

The teachers and the scratch student are those of configs/demo.py (trained once). The KD stage
draws 27 points with Optuna's TPE sampler from the lab's λ (the ce/kd weights (1 − λ, λ), a
simplex), α (the two teachers' split), β (the SP weight, log-uniform) and T (log-uniform), in 3
waves of 9: each wave trains all 9 for 1 epoch, the best 3 on validation accuracy for a second,
the best one to epoch 5 as the scratch student (each rung one program of its points x 5 folds;
the survivors continue from their checkpoints), and is told to TPE before the next wave is drawn.
One of each fold's training subjects validates: the choice reads validation accuracy only, test
accuracy is reported. W/student_kd/search.csv holds every point; W/report.md the chosen one.

From a fresh clone on an idle 2-core CPU it took 4 min 15 s wall (405 s user CPU, 5.5 GB peak
RSS; install excluded). The first wave drew β from 11 to 550; the later waves, modelling it,
stayed below 80 (β above 200 had the worst validation accuracy). It chose λ = 0.52, α = 0.76,
T = 2.0, β = 22: test accuracy 80.88 (final), 0.63 points below the scratch student (paired over 5
folds, p = 0.26); 225 run-epochs against 675 for every point to the end.
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
  kd.search.space = search.lab_kd(beta=(10, 1000), temperature=(1, 8))
  kd.search.halving.rungs = (1, 2)
  kd.search.halving.eta = 3
  return config
