"""Finished workdirs read back: a pipeline's stages and their results, a table's columns.

A pipeline workdir lists its stages in W/stages.json (or holds stage directories with
results.json); a table workdir lists its columns in W/table.json (or holds pipeline workdirs,
trained separately, in its subdirectories).
"""

from __future__ import annotations

import json
import os
from typing import Any

SCRATCH = "student_scratch"
TABLE_JSON = "table.json"


class TableError(ValueError):
  """A report over workdirs that do not form one table."""


def stage_names(workdir: str) -> list[str]:
  """The pipeline's stages in order (W/stages.json), else every subdirectory with results."""
  path = os.path.join(workdir, "stages.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  names = sorted(n for n in os.listdir(workdir) if os.path.isfile(
      os.path.join(workdir, n, "results.json"))) if os.path.isdir(workdir) else []
  rank = lambda n: (0 if n.startswith("teacher_") else 1 if n == SCRATCH else 2, n)
  return sorted(names, key=rank)


def is_kd_stage(name: str) -> bool:
  return not name.startswith("teacher_") and name != SCRATCH


def read_stages(workdir: str) -> dict[str, dict]:
  """Each trained stage's results.json, in pipeline order."""
  out = {}
  for name in stage_names(workdir):
    path = os.path.join(workdir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def is_pipeline_workdir(workdir: str) -> bool:
  return bool(stage_names(workdir)) and not os.path.exists(os.path.join(workdir, "runs.json"))


def read_columns(workdir: str) -> list[dict[str, Any]]:
  """The columns of a table workdir: W/table.json's, or (a directory of pipeline workdirs trained
  separately, e.g. one per machine) every subdirectory holding stages.json, by name. TableError
  when there are none or when they hold different tables."""
  path = os.path.join(workdir, TABLE_JSON)
  if os.path.exists(path):
    with open(path) as f:
      cols = json.load(f)["columns"]
  elif os.path.isdir(workdir):
    cols = [{"key": n, "label": n, "dir": n, "overrides": None} for n in sorted(os.listdir(workdir))
            if os.path.isfile(os.path.join(workdir, n, "stages.json"))]
  else:
    cols = []
  if not cols:
    raise FileNotFoundError(f"{workdir} holds no table (no {TABLE_JSON} and no pipeline workdirs "
                            "in its subdirectories); train a table config first")
  ref = None
  for c in cols:
    d = os.path.join(workdir, c["dir"])
    if not os.path.isfile(os.path.join(d, "stages.json")):
      raise FileNotFoundError(f"column {c['label']}: {d} holds no pipeline (no stages.json); "
                              "train the table first")
    with open(os.path.join(d, "stages.json")) as f:
      stages = json.load(f)
    data = _data_name(d)
    if ref is None:
      ref = (c, stages, data)
    elif (stages, data) != ref[1:]:
      what = (f"data {ref[2]} vs {data}" if data != ref[2] else "stages " + ", ".join(
          sorted(set(stages) ^ set(ref[1]))) if set(stages) != set(ref[1]) else "stage order")
      raise TableError(f"{d} and {os.path.join(workdir, ref[0]['dir'])} hold different tables "
                       f"({what}); a table's columns must have the same rows and data source")
  return cols


def _data_name(d: str) -> str | None:
  path = os.path.join(d, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("data", {}).get("name")


def is_table_workdir(workdir: str) -> bool:
  if os.path.exists(os.path.join(workdir, TABLE_JSON)):
    return True
  return os.path.isdir(workdir) and not os.path.exists(os.path.join(workdir, "stages.json")) and any(
      os.path.isfile(os.path.join(workdir, n, "stages.json")) for n in os.listdir(workdir))
