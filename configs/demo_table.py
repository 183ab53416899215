"""The results table's rows at demo scale on the embedded smartwatch data (`watch`: 10 subjects,
7 exercises, 6 channels), from a fresh clone in minutes on a 2-core CPU:

  python -m jkd.main --config=configs/demo_table.py --workdir=W

The rows of configs/pamap_table.py (`jkd.pipeline.tables`): signal, GAF and persistence-image teachers
trained once; the student from scratch; single-teacher KD from each; DCD and "projection" from
the signal teacher; PI + signal and GAF + signal (base, annealing, annealing + SP); three teachers
with EBKD, CA-MKD and MTKD-RL weights and with the lab's weight triples (base, annealing,
annealing + SP). Small models and images (WRN10-1 students,
16 x 16 images), 5 folds of 2 subjects, one trial, non-overlapping windows, a few epochs: numbers
to see every row work, not to cite. Two columns (`jkd.pipeline.columns`), the signal teacher's
architecture, WRN16-1 and WRN10-1, as the lab's table has one per teacher architecture; the GAF
and PI teachers and the scratch student are the same in both and train once. W/table.md (.csv,
.tex) is the paper's table, W/plots/ its figures.

From a fresh clone on an idle 2-core AMD EPYC CPU: 12 min 6 s wall (1,152 s user CPU, 3.9 GB
peak RSS; the install, about 20 s, excluded); 37 stage trainings, 5 of the 42 cells shared.
"""

import jkd.data
from jkd.pipeline import columns, tables
from jkd import pipeline


def get_config():
  config = pipeline.base(jkd.data.default_config("watch"))
  config.data.step = 100             # non-overlapping 2 s windows
  config.data.num_folds = 5          # 2 subjects per fold: 5 paired folds for the gains' tests
  config.model.name = "wrn10_1"
  config.train.epochs = 4
  config.train.batch_size = 64
  config.train.checkpoint_every = 100
  config.optim.lr = 0.05
  config.optim.schedule = "cosine"
  tables.table(config, lam=0.9, alpha=0.5, beta=200.0, image_size=16,
               teacher_model={"name": "wrn10_1"})
  config.teachers.signal.model.name = "wrn16_1"
  for t in ("signal", "gaf", "pi"):
    config.stages[f"teacher_{t}"].train.epochs = 10
  for name in ("wrn16_1", "wrn10_1"):
    d, k = name[3:].split("_")
    columns.add(config, name, f"signal WRN{d}-{k}", {"teachers.signal.model.name": name})
  return config
