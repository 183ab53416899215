"""Demo: WRN16-1 on the smartwatch exercise data (10 subjects, 7 classes, 6 channels), LOSO.

  python -m jkd.main --config=configs/watch.py --workdir=/tmp/watch

10 runs (folds) trained together: about 4 minutes on a 2-core CPU; ~84% final, ~86% best-epoch
mean test accuracy.
"""

import jkd.data
from jkd import config as config_lib


def get_config():
  config = config_lib.base(jkd.data.default_config("watch"))   # LOSO over the 10 subjects
  config.model.name = "wrn16_1"
  config.train.epochs = 8
  config.train.batch_size = 64
  config.train.checkpoint_every = 2
  config.optim.lr = 0.05
  config.optim.schedule = "cosine"   # the lab's step schedule needs more epochs than a demo has
  return config
