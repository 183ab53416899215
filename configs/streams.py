"""Your own continuous recordings: one .npz with x (T, C), y (T,), subject (T,) (jkd/data/npz.py).

  python -m jkd.main --config=configs/streams.py --workdir=W --config.data.path=my_streams.npz

Windows of data.window samples every data.step samples; leave-one-subject-out by default.
"""

import jkd.data
from jkd import config as config_lib


def get_config():
  config = config_lib.base(jkd.data.default_config("streams"))
  config.data.window = 100
  config.data.step = 50
  config.model.name = "wrn16_1"
  config.train.epochs = 200
  config.train.batch_size = 128
  return config
