"""The lab's GENEActiv results tables in one command: columns 7 classes × 1000 samples, 7 × 500
and 14 × 500 (`jkd.pipeline.columns`; `:7,1000` etc. keeps one column).

  python -m jkd.main --config=configs/geneactiv_table.py --workdir=W --config.data.path=DIR

The rows of configs/pamap_table.py plus the single-teacher baselines of the GENEActiv tables,
each from the signal teacher with its authors' weights (`jkd.pipeline.tables`: AT, SP, DKD, DIST, RKD,
PKT, FitNet, CRD, SimKD, SRRL, PEFD), ESKD and full KD (the lab's KD from a WRN16-3 signal
teacher at its best-accuracy and at its last checkpoint; `eskd_epoch=N` below takes the
checkpoint after epoch N instead, Cho & Hariharan's early stop), and AVER from GAF + signal. β = 700 (the lab's GENEActiv SP weight); 5 subject-grouped folds x 3 trials, 200 epochs.
"""

import jkd.data
from jkd.pipeline import columns, tables
from jkd import pipeline

COLUMNS = ((7, 1000), (7, 500), (14, 500))


def get_config(arg: str = ""):
  cols = COLUMNS
  if arg:
    cols = (tuple(int(v) for v in arg.split(",")),)
    classes, window = cols[0]
    if classes not in (7, 14) or window not in (500, 1000):
      raise ValueError(f"configs/geneactiv_table.py:{arg}: use CLASSES,WINDOW with classes 7 or "
                       "14 and window 500 or 1000")
  classes, window = cols[0]
  config = pipeline.base(jkd.data.default_config("geneactiv"))
  config.data.num_classes = classes
  config.data.window = window
  config.train.epochs = 200
  config.train.seeds = 3
  tables.table(config, lam=0.99, alpha=0.5, beta=700.0, image_size=64, baselines=True,
               eskd_teacher={"name": "wrn16_3"})
  for t in ("gaf", "pi"):
    config.stages[f"teacher_{t}"].train.eval_batch_size = 128
  if len(cols) > 1:
    for c, w in cols:
      columns.add(config, f"c{c}_w{w}", f"{c} classes, {w}",
                  {"data.num_classes": c, "data.window": w})
  return config
