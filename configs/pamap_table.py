"""The lab's PAMAP2 results table in one command: every row, sharing the trained teachers.

  python -m jkd.main --config=configs/pamap_table.py --workdir=W --config.data.path=PAMAP2_DIR

Teachers WRN16-1 on the signal, on GASF images and on persistence images (S = 64, one image per
channel); the WRN16-1 student from scratch; then one stage per row (`jkd.pipeline.tables`): single-teacher
KD from each teacher, DCD and "projection" (RP) from the signal teacher, PI + signal and GAF +
signal (base, annealing, annealing + SP), three teachers with EBKD, CA-MKD and MTKD-RL weights,
and three teachers base / annealing / annealing + SP over the lab's four weight triples. The lab's PAMAP2 protocol otherwise (configs/pamap_spkd.py): 9
LOSO folds x 3 trials, 200 epochs, λ = 0.99, T = 4, α = 0.5, β = 200. The report (W/report.md)
has one row per stage and sweep point, the gain over the scratch student with its paired test,
and the lab's "±". Four columns (`jkd.pipeline.columns`), the teachers' architecture: WRN16-1, WRN16-3,
WRN28-1, WRN28-3 (all three teachers; docs/protocol.md §8); the scratch student is trained once.
W/table.md, table.csv, table.tex hold the paper's table (`jkd.report.paper_table`), W/<column>/ each
column's pipeline.
"""

import jkd.data
from jkd.pipeline import columns, tables
from jkd import pipeline

TEACHERS = ("wrn16_1", "wrn16_3", "wrn28_1", "wrn28_3")


def get_config():
  config = pipeline.base(jkd.data.default_config("pamap2"))
  config.train.epochs = 200
  config.train.seeds = 3
  tables.table(config, lam=0.99, alpha=0.5, beta=200.0, image_size=64)
  # 64 x 64 x 40 images: evaluate the image teachers in batches of 128 (im2col memory).
  for t in ("gaf", "pi"):
    config.stages[f"teacher_{t}"].train.eval_batch_size = 128
  for name in TEACHERS:
    d, k = name[3:].split("_")
    columns.add(config, name, f"WRN{d}-{k}",
                {f"teachers.{t}.model.name": name for t in ("signal", "gaf", "pi")})
  return config
