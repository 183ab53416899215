"""Every check a command needs, once, in one place, before anything is built, written or trained.

`run(config, workdir, mode=..., overwrite=..., step=...)` checks, in seconds:

* the workdir (it can be written; it holds this config or none; `--mode=eval`: a checkpoint);
* the config's values (`jkd.config.validate`): a pipeline's structure and every stage it will
  train, with its keys spelt as the pipeline config spells them (`stages.<s>.…`, `teachers.<t>.…`);
* the stages' workdirs (a stage trained under another config is refused unless `--overwrite`);
* the data (loaded once and kept for the training: `jkd.data.keep_loaded`) against the configs:
  a full batch in every fold, augmentation channels that exist;
* the teachers' sources: every fold's and seed's file or run, the architecture a lab file holds;
* a table config's columns (`jkd.pipeline.columns`): each override names a key, no two columns alike, and
  every column checked as the pipeline it is.

Each problem raises one of `USER_ERRORS` with a one-line message; `jkd.main` prints it and exits
with status 2. Whatever is raised after the preflight passed is a bug, shown with its traceback.
"""

from __future__ import annotations

import json
import os
import re

import ml_collections as mc

import jkd.data
from jkd import config as config_lib
from jkd.pipeline import columns
from jkd import convert, distill, pipeline
from jkd import search
from jkd.engine import parallel, setup, teachers, tensorboard
from jkd.engine import workdir as workdir_lib
from jkd.report import workdirs
from jkd.data import folds as folds_lib

USER_ERRORS = (config_lib.ConfigError, workdir_lib.WorkdirError, jkd.data.DataError,
               FileNotFoundError, convert.CheckpointError, workdirs.TableError)


def run(config: mc.ConfigDict, workdir: str, *, mode: str = "train", overwrite: bool = False,
        step: int | None = None) -> None:
  """Raise a `USER_ERRORS` error for the first problem the inputs alone show; write nothing.
  A table config (`jkd.pipeline.columns`) is checked column by column, each a pipeline in W/<column>/."""
  if columns.is_table(config):
    if mode == "eval":
      raise config_lib.ConfigError("--mode=eval evaluates one stage: pass --workdir=W/<column>/"
                                   "<stage> and that stage's config")
    workdir_lib.check_path(workdir)
    for key, _, c in columns.expand(config):
      run(c, os.path.join(workdir, columns.dirname(key)), mode=mode, overwrite=overwrite)
    return
  workdir_lib.check_path(workdir)
  is_pipeline = pipeline.is_pipeline(config)
  if is_pipeline:
    if mode == "eval":
      raise config_lib.ConfigError(
          "--mode=eval evaluates one stage: pass --workdir=W/<stage> and that stage's config "
          "(W/<stage>/config.json)")
    config_lib.validate(config, check_sweep=False)   # a pipeline's sweeps are its stages'
    pipeline.check_structure(config)
    views = [(n, pipeline.stage_config(config, n, workdir)) for n in pipeline.stages_to_run(config)]
  else:
    views = [("", config)]
  for name, view in views:
    with _in_stage(name):
      config_lib.validate(view)
      tensorboard.check(view)
      if search.is_search(view):
        search.check(view)
  if mode == "eval" and not is_pipeline and search.is_search(config):
    raise config_lib.ConfigError(
        "--mode=eval evaluates one program: a search's are its rungs, pass --workdir=W/rung<k> "
        "and that rung's config (W/rung<k>/config.json)")
  if mode == "eval":
    workdir_lib.check_checkpoints(workdir, step)
  elif not is_pipeline:
    workdir_lib.check_workdir(config, workdir, overwrite)
    workdir_lib.check_init_from(config)
  elif not overwrite:
    for name, view in views:
      _check_stage_dir(os.path.join(workdir, name), name, view)
  windows = jkd.data.load(config.data)
  counts = folds_lib.train_counts(windows.subject, config.data)
  # The CPU is split as the training will split it (`jkd.engine.setup.build`), before anything below
  # starts the backend: XLA:CPU's numbers depend on the device count.
  parallel.use_cpu_devices(len(counts) * max(
      search.num_points(v) * len(config_lib.seeds(v)) for _, v in views))
  for name, view in views:
    with _in_stage(name):
      config_lib.check_fit(view, windows.x.shape[2], windows.x.shape[1], counts)
      try:
        setup.check_terms(view, windows.x.shape[1:], len(windows.x), counts, len(windows.classes))
      except (distill.TermError, ValueError) as e:   # a term's parts cannot be built for these
        raise config_lib.ConfigError(" ".join(str(e).split())) from None
  if is_pipeline:
    _check_external_teachers(config, dict(views), windows)


class _in_stage:
  """Re-raise a stage config's ConfigError with its keys as the pipeline config spells them."""

  def __init__(self, stage: str):
    self.stage = stage

  def __enter__(self):
    return self

  def __exit__(self, kind, e, tb):
    if self.stage and isinstance(e, config_lib.ConfigError):
      raise config_lib.ConfigError(in_stage(self.stage, str(e))) from None
    return False


_SECTION = re.compile(r"(?<![\w.])(--config\.)?"
                      r"((model|train|optim|loss|augment|distill|sweep)\.[\w.]*\w)")


def stage_key(stage: str, key: str) -> str:
  """Where a pipeline stage's engine-config `key` is set on the command line: its model is the
  teacher's (`teachers.<t>.model`) or the student's (`stages.student_scratch.model`), the rest
  `stages.<stage>.<section>` (which inherits the shared section key by key)."""
  section = key.split(".")[0]
  if section == "model":
    if stage.startswith("teacher_"):
      return f"teachers.{stage[len('teacher_'):]}.{key}"
    return f"stages.{pipeline.SCRATCH}.{key}"
  return f"stages.{stage}.{key}"


def in_stage(stage: str, msg: str) -> str:
  """A stage config's one-line message with its keys as the pipeline config spells them."""
  out, n = _SECTION.subn(lambda m: ("--config." if m.group(1) else "")
                        + stage_key(stage, m.group(2)), msg)
  return out if n else f"stage {stage}: {msg}"


def _check_stage_dir(stage_dir: str, name: str, view: mc.ConfigDict) -> None:
  """A pipeline stage's workdir holds this stage config or none, read-only."""
  path = os.path.join(stage_dir, "config.json")
  try:
    changed = pipeline.status(stage_dir, view) == "changed"
    if changed:
      with open(path) as f:
        old = json.load(f)
  except (OSError, ValueError) as e:
    raise workdir_lib.WorkdirError(f"{path} is unreadable ({type(e).__name__}: {e}); use another "
                                   "--workdir, or --overwrite to retrain that stage") from None
  if changed:
    diff = config_lib.diff(old, json.loads(config_lib.to_json(view)))
    raise workdir_lib.WorkdirError(
        f"{stage_dir} holds stage {name} of a different config ({diff}); use another --workdir, "
        "or --overwrite to retrain the stages whose config changed (and those depending on them), "
        "keeping the others")


def _check_external_teachers(config: mc.ConfigDict, views: dict[str, mc.ConfigDict],
                             windows) -> None:
  """External teacher sources serve every run: PyTorch files for every fold and seed (and the
  first holds the architecture the config names), jkd workdirs with every (fold, seed)."""
  external = [t for t in pipeline.used_teachers(config) if config.teachers[t].source]
  test_subjects = None
  if any(teachers.is_torch_source(config.teachers[t].source) for t in external):
    test_subjects = folds_lib.make_folds(windows.x, windows.y, windows.subject, config.data,
                                         num_classes=len(windows.classes)).test_subjects
  for n in pipeline.kd_stages(config):
    cfg = views[n]
    seeds = config_lib.seeds(cfg)
    for t in cfg.distill.teachers:
      src = config.teachers[t].source
      if not src or src.startswith("@"):
        continue
      if test_subjects is not None:
        pairs = [(f, s) for f in range(len(test_subjects)) for s in seeds]
      else:
        pairs = _workdir_pairs(src, seeds)
      teachers.check_source(t, cfg.teachers[t], pairs, test_subjects, len(windows.classes))


def _workdir_pairs(src: str, seeds: list[int]) -> list[tuple[int, int]] | None:
  """(fold, seed) pairs a teacher workdir must hold: its folds x the student's seeds."""
  path = os.path.join(src, "runs.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    folds = sorted({r["fold"] for r in json.load(f)})
  return [(f, s) for f in folds for s in seeds]
