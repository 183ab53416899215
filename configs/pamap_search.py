"""The lab's PAMAP2 distillation (configs/pamap_spkd.py) with its KD hyper-parameters searched, not
hand-picked: λ, α, β and T, chosen on validation subjects, never on the test subject.

  python -m jkd.main --config=configs/pamap_search.py --workdir=W --config.data.path=PAMAP2_DIR

The teachers and the scratch student are pamap_spkd.py's, but give a new --workdir: one of each
fold's 8 training subjects validates, so every stage trains on 7. The KD stage draws 27 points with TPE in 3 waves of 9: the
lab's λ as the ce/kd weights (1 − λ, λ) on a simplex, α (the image teacher's weight) uniform in
0–1, β (SP) log-uniform in 10–1000, T log-uniform in 1–8. Each wave trains its 9 points x 9
folds x 3 trials (243 runs) in one program to epoch 25, the best 3 by mean validation accuracy to
epoch 70, the best one to epoch 200 (the lab's schedule steps down after epochs 11, 66 and 133;
every point follows the 200-epoch schedule). Run-epochs: 3 waves x (9 x 25 + 3 x 45 + 1 x 130) x
27 runs = 39,690, 27 % of the 145,800 that every point (or a 27-point grid) trained to the end
costs. The winner is the best of the three points trained to the end; W/report.md gives its test
accuracy with the lab's ±, W/student_kd/search.csv every point.
"""

import os

from jkd import config as config_lib
from jkd import search


def get_config():
  config = config_lib.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "pamap_spkd.py"))
  config.data.num_val_subjects = 1
  kd = config.stages.student_kd
  kd.search = search.default_config(points=27, sampler="tpe", seed=0, waves=3)
  kd.search.space = search.lab_kd(beta=(10, 1000), temperature=(1, 8))
  kd.search.halving.rungs = (25, 70)
  kd.search.halving.eta = 3
  return config
