"""GENEActiv wrist accelerometer, WRN16-1, 7 classes (`configs/geneactiv.py:14` for 14 classes).

  python -m jkd.main --config=configs/geneactiv.py --workdir=W --config.data.path=DIR
  python -m jkd.main --config=configs/geneactiv.py:14 --workdir=W --config.data.path=DIR

Windows of `data.window` samples (1000 or 500, the folder under DIR); subject-grouped K folds
(`data.num_folds`); the lab's optimisation (docs/protocol.md §5), 3 trials.
"""

import jkd.data
from jkd import config as config_lib


def get_config(num_classes: str = "7"):
  config = config_lib.base(jkd.data.default_config("geneactiv"))
  config.data.num_classes = int(num_classes)
  config.model.name = "wrn16_1"
  config.train.epochs = 200
  config.train.batch_size = 128
  config.train.seeds = 3
  return config
