"""PAMAP2, WRN16-1 on the 40-channel signal, LOSO over 9 subjects (docs/protocol.md §5, §6.1).

  python -m jkd.main --config=configs/pamap2.py --workdir=W --config.data.path=pamap2_12cls9sbj.data

The lab's protocol: SGD momentum 0.9, coupled weight decay 1e-4, batch 128, 200 epochs, lr 0.05
-> 0.01 -> 0.001 -> 1e-4 by epoch (the 'lab' schedule), 3 trials (seeds 1234, 1235, 1236).
Set model.ndim=2 (and e.g. model.name) for the GAF image teacher.
"""

import jkd.data
from jkd import config as config_lib


def get_config():
  config = config_lib.base(jkd.data.default_config("pamap2"))
  config.model.name = "wrn16_1"
  config.model.ndim = 1
  config.train.epochs = 200
  config.train.batch_size = 128
  config.train.seeds = 3
  return config
