"""GENEActiv, 14 classes: the same experiment as configs/geneactiv.py with data.num_classes = 14."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "geneactiv_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "geneactiv.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
  return _base.get_config("14")
