"""Your own ready-made windows: one .npz with x (N, L, C), y (N,), subject (N,) (jkd/data/npz.py).

  python -m jkd.main --config=configs/windows.py --workdir=W --config.data.path=my_windows.npz

Leave-one-subject-out (data.num_folds=0) or --config.data.num_folds=K subject groups.
"""

import jkd.data
from jkd import config as config_lib


def get_config():
  config = config_lib.base(jkd.data.default_config("windows"))
  config.model.name = "wrn16_1"
  config.train.epochs = 200
  config.train.batch_size = 128
  return config
