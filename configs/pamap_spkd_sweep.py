"""A sweep on top of configs/pamap_spkd.py: α (image-teacher weight) x β (SP weight), every fold and
trial, in ONE program: 5 x 3 points x 9 folds x 3 trials = 405 KD runs.

  python -m jkd.main --config=configs/pamap_spkd_sweep.py --workdir=W --config.data.path=PAMAP2_DIR

With the same --workdir as pamap_spkd.py the teachers and the scratch student are reused (their
stage configs do not change); only student_kd trains. α spans docs/protocol.md §4's 0.1-0.9; β brackets
the lab's 200 (PAMAP2) with 0 (no SP) and 700 (their GENEActiv value).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "pamap_spkd", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pamap_spkd.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
  config = _base.get_config()
  config.stages.student_kd.sweep = {"loss": {"alpha": (0.1, 0.3, 0.5, 0.7, 0.9),
                                             "sp": {"weight": (0.0, 200.0, 700.0)}}}
  return config
