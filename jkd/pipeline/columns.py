"""A results table's columns: one pipeline per column, stages shared where their configs agree.

A table config is a pipeline config (`jkd.pipeline`) with a `columns` section; each column is a
set of overrides of that config (dotted keys, as on the command line):

  columns.<key>.label      the column's heading ("WRN16-3", "7 classes, 500")
  columns.<key>.index      its place in the table (ConfigDict keeps keys sorted by name)
  columns.<key>.overrides  a JSON object {"teachers.signal.model.name": "wrn16_3", ...}

`add(config, key, label, {...})` declares one. One command trains every cell:

  W/table.json        the columns (key, label, overrides) and which stages each column shares
  W/<key>/            column <key> as a pipeline workdir (config.json, stages.json, results.json,
                      report.md, plots/, one directory per stage)
  W/<key>/<stage>     for a stage whose resolved config is the same in an earlier column (the
                      scratch student when the columns change only the teachers): a symlink to
                      that column's stage directory; the stage trains once
  W/table.md, table.csv, table.tex, results.json, plots/   the paper's table (`jkd.report.paper_table`)

Sharing is decided on the resolved stage configs (`jkd.pipeline.stage_config`); a distillation
stage's config names its teachers' and its initialisation's directories, compared as the
directories of the columns that train them (`jkd.pipeline.status` resolves the links): the demo
table's columns change the signal teacher only, so its GAF and PI teachers, its scratch student
and the rows taught by the GAF or PI teacher alone train once. In the lab's tables every column
changes every teacher (PAMAP2) or the data (GENEActiv): only the scratch student repeats.

Columns are not trained as one program. Teachers of different widths or depths are different
programs; columns of different windows are different data; only the distillation stages of
columns that differ in the teachers alone could share a program (the student's step reads cached
teacher outputs), and then only logit terms: SP and the feature terms cache teacher feature maps
whose widths differ per column. On a CPU, jkd already gives every run its own device, so a
program of 4x the runs takes about 4x as long; the gain (fewer compiles, fuller GPUs) is not
worth an engine change while the engine is being redesigned.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, Callable

import ml_collections as mc

from jkd import config as config_lib
from jkd import pipeline
from jkd.report.workdirs import TABLE_JSON, TableError, read_columns, is_table_workdir  # noqa: F401

def is_table(config: mc.ConfigDict) -> bool:
  return "columns" in config and len(config.columns) > 0


def add(config: mc.ConfigDict, key: str, label: str, overrides: dict[str, Any]) -> None:
  """Declare column `key` (headed `label`) as `overrides` of `config`."""
  if "columns" not in config:
    config.columns = mc.ConfigDict()
  config.columns[key] = mc.ConfigDict({"label": label, "index": len(config.columns),
                                       "overrides": json.dumps(overrides, sort_keys=True)})


def dirname(key: str) -> str:
  return re.sub(r"[^\w.+-]", "_", key)


def _overrides(key: str, col: mc.ConfigDict) -> dict[str, Any]:
  try:
    out = json.loads(col.overrides) if col.overrides else {}
  except json.JSONDecodeError as e:
    raise config_lib.ConfigError(f"columns.{key}.overrides is not a JSON object ({e.msg}); write "
                                 "e.g. '{\"teachers.signal.model.name\": \"wrn16_3\"}'") from None
  if not isinstance(out, dict):
    raise config_lib.ConfigError(f"columns.{key}.overrides is not a JSON object of dotted keys")
  return out


def _set(config: mc.ConfigDict, key: str, value: Any, where: str) -> None:
  if key.split(".")[0] == "columns":
    raise config_lib.ConfigError(f"{where}: a column cannot override the columns")
  try:
    current = config_lib.get(config, key)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"{where}: override {key!r} names no key of the config "
                                 f"({e})") from None
  if isinstance(current, mc.ConfigDict):
    raise config_lib.ConfigError(f"{where}: override {key!r} names a section; set its keys")
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  parent, leaf = key.rpartition(".")[0], key.rpartition(".")[2]
  node = config_lib.get(config, parent) if parent else config
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(f"{where}: override {key}={value!r}: {e}") from None


def expand(config: mc.ConfigDict) -> list[tuple[str, str, mc.ConfigDict]]:
  """(key, label, the column's pipeline config) per column, in order; ConfigError for an override
  that names no key or takes a wrong value, and for two columns with the same overrides."""
  base = copy.deepcopy(config)
  with base.unlocked():
    del base["columns"]
  seen: dict[str, str] = {}
  dirs: dict[str, str] = {}
  out = []
  for key, col in sorted(config.columns.items(), key=lambda kv: (kv[1].get("index", 0), kv[0])):
    over = _overrides(key, col)
    canon = json.dumps(over, sort_keys=True)
    if canon in seen:
      raise config_lib.ConfigError(f"columns.{seen[canon]} and columns.{key} set the same "
                                   f"overrides ({canon}): every column must differ")
    seen[canon] = key
    if dirname(key) in dirs:
      raise config_lib.ConfigError(f"columns.{dirs[dirname(key)]} and columns.{key} map to the "
                                   f"same directory {dirname(key)}; rename one")
    dirs[dirname(key)] = key
    c = copy.deepcopy(base)
    for k, v in over.items():
      _set(c, k, v, f"columns.{key}")
    out.append((key, col.label or key, c))
  return out


def shared_stages(cols: list[tuple[str, str, mc.ConfigDict]], workdir: str
                  ) -> dict[str, dict[str, str]]:
  """column key -> {stage: the earlier column whose identical stage it uses}. Stages are compared
  on their resolved configs, with the directories of the stages they read (teachers, the scratch
  student) replaced by those of the columns that train them: a distillation stage whose teachers
  and initialisation are shared, and whose own config is the same, is shared too."""
  owners: dict[tuple[str, str], str] = {}
  out: dict[str, dict[str, str]] = {}
  for key, _, c in cols:
    out[key] = {}
    d = os.path.join(workdir, dirname(key))
    for n in pipeline.stages_to_run(c):
      text = config_lib.to_json(pipeline.stage_config(c, n, d))
      for dep, owner in out[key].items():   # the stages it reads, where they are trained
        text = text.replace(json.dumps(os.path.abspath(os.path.join(d, dep))),
                            json.dumps(os.path.abspath(os.path.join(workdir, dirname(owner), dep))))
      sig = (n, text)
      if sig in owners:
        out[key][n] = owners[sig]
      else:
        owners[sig] = key
  return out


def _link(workdir: str, key: str, stage: str, owner: str, log: Callable[[str], None]) -> None:
  path = os.path.join(workdir, dirname(key), stage)
  target = os.path.join("..", dirname(owner), stage)
  if os.path.islink(path):
    if os.readlink(path) == target:
      return
    os.unlink(path)
  elif os.path.exists(path):
    log(f"[{key}/{stage}] same config as column {owner}, but {path} already holds a stage: "
        "kept (not shared)")
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  os.symlink(target, path)


def run(config: mc.ConfigDict, workdir: str, overwrite: bool = False,
        log: Callable[[str], None] = print) -> dict:
  """Train every cell (each column a pipeline, shared stages once), then write the table."""
  from jkd.report import paper_table
  from jkd.engine import parallel   # noqa: PLC0415
  cols = expand(config)
  shared = shared_stages(cols, workdir)
  if parallel.is_writer():
    from jkd.engine.metrics import write_atomic   # noqa: PLC0415
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    write_atomic(os.path.join(workdir, TABLE_JSON), json.dumps({
        "columns": [{"key": k, "label": label, "dir": dirname(k),
                     "overrides": _overrides(k, config.columns[k])}
                    for k, label, _ in cols],
        "shared": shared}, indent=1))
    for key, stages in shared.items():
      for stage, owner in stages.items():
        _link(workdir, key, stage, owner, log)
  saved = sum(len(s) for s in shared.values())
  if saved:
    log(f"table: {len(cols)} columns; {saved} stage(s) shared with an earlier column train once: "
        + "; ".join(f"{k}: {', '.join(s)}" for k, s in shared.items() if s))
  retrained: set[tuple[str, str]] = set()   # (owner column, stage)
  for key, label, c in cols:
    d = os.path.join(workdir, dirname(key))
    log(f"== column {label} -> {d}")
    # Shared stages this column trains (or resumes) also count as retrained for the columns that
    # use them, so those retrain their distillation stages that depend on them.
    owned = {n for k, s in shared.items() for n, o in s.items() if o == key}
    for n in pipeline.stages_to_run(c):   # dependencies first
      if n not in owned:
        continue
      deps = {(shared[key].get(p, key), p) for p in pipeline.dependencies(c, n)}
      if (pipeline.status(os.path.join(d, n), pipeline.stage_config(c, n, d)) != "done"
          or deps & retrained):
        retrained.add((key, n))
    pipeline.run(c, d, overwrite=overwrite, log=log,
                 retrained={n for n, o in shared[key].items() if (o, n) in retrained})
  if not parallel.is_writer():
    return {}
  full = paper_table.write(workdir)
  log(paper_table.console(full))
  log(f"table: {os.path.join(workdir, 'table.md')} (also table.csv, table.tex, plots/)")
  return full


# ----------------------------------------------------------------------------- reading

__all__ = ["add", "expand", "is_table", "shared_stages", "run", "read_columns",
           "is_table_workdir", "TableError", "dirname"]
