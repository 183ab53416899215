"""The distillation pipeline: teachers → student from scratch → KD student, each stage on the engine.

A config with a `stages` section is a pipeline (`jkd.main` dispatches it here). Its top-level
`model`/`train`/`optim`/`loss`/`augment` sections are shared defaults; `stages.<name>` holds what a
stage changes (any subset of those sections), merged over them:

  teacher_signal   e.g. a 1-D WRN on the windows                      -> W/teacher_signal/
  teacher_image    e.g. a 2-D WRN on GAF images made in the step     -> W/teacher_image/
  student_scratch  the student with CE only (baseline, initialisation) -> W/student_scratch/
  student_kd       the student with `jkd.kd`'s objective and frozen teachers -> W/student_kd/

`student_kd` uses `student_scratch`'s model (the same student), its `loss` section adds the KD keys
(`jkd.kd.defaults`), and the top-level `sweep` applies to it alone (teachers and the baseline are
trained once). `kd` chooses the teachers: `kd.teachers` (subset of signal, image, in weight order),
per teacher `kd.<teacher>.source` ('' = train its stage; or a jkd workdir, or a lab `.pth.tar` path
with `{fold}`/`{seed}`/`{subject}`, see `jkd.teachers`) and `.which` ('last'|'best');
`kd.init_from_scratch` starts each KD run from the scratch student of the same fold and seed (the
lab's "annealing" initialisation).

Each stage trains every run (folds x seeds x sweep) in one program and is skipped when its
workdir already holds complete results for the same stage config; a stage whose config changed is
refused unless `--overwrite`, which retrains only the changed stages (and those that depend on a
retrained one). Afterwards `jkd.report` writes W/results.json, W/report.md and W/plots/.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import ml_collections as mc

from jkd import config as config_lib
from jkd import kd, report, teachers
from jkd import runs as runs_lib

STAGES = report.STAGES
TEACHER_STAGE = {"signal": "teacher_signal", "image": "teacher_image"}
SECTIONS = ("model", "train", "optim", "loss", "augment")


def is_pipeline(config: mc.ConfigDict) -> bool:
  return "stages" in config


def base(data: mc.ConfigDict) -> mc.ConfigDict:
  """Engine defaults plus the pipeline sections; configs/*_spkd.py start here."""
  c = config_lib.base(data)
  c.stages = mc.ConfigDict({
      "teacher_signal": {"model": {"name": "wrn16_1", "ndim": 1}},
      "teacher_image": {"model": {"name": "wrn16_1", "ndim": 2, "image_size": 64,
                                  "gaf_method": "summation"}},
      "student_scratch": {"model": {"name": "wrn16_1", "ndim": 1}},
      "student_kd": {"loss": kd.defaults()},
  })
  c.kd = mc.ConfigDict({
      "teachers": ("signal", "image"),
      "init_from_scratch": True,
      "init_which": "last",
      "cache": True,           # cache teacher outputs when no augmentation is active
      "cache_gb": 2.0,         # memory for cached outputs, all teachers and runs together
      "signal": {"source": "", "which": "last"},
      "image": {"source": "", "which": "last"},
  })
  return c


def _merge(base: dict, over: dict) -> dict:
  out = dict(base)
  for k, v in over.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def _check(config: mc.ConfigDict) -> None:
  unknown = sorted(set(config.stages) - set(STAGES))
  if unknown:
    raise config_lib.ConfigError(f"stages.{unknown[0]} is not a pipeline stage; stages are "
                                 f"{', '.join(STAGES)}")
  for name, over in config.stages.items():
    bad = sorted(set(over) - set(SECTIONS))
    if bad:
      raise config_lib.ConfigError(f"stages.{name}.{bad[0]}: a stage may change "
                                   f"{', '.join(SECTIONS)} only")
  order = tuple(config.kd.teachers)
  if not order or len(order) > 2 or not set(order) <= set(TEACHER_STAGE) or len(set(order)) < len(order):
    raise config_lib.ConfigError(f"kd.teachers={order!r}: one or two of 'signal', 'image'")
  if "student_kd" in config.stages and "model" in config.stages.student_kd:
    raise config_lib.ConfigError("stages.student_kd.model: the KD student is student_scratch's "
                                 "model; set stages.student_scratch.model instead")


def stages_to_run(config: mc.ConfigDict) -> list[str]:
  """Teacher stages of the teachers used and not imported, then the two student stages."""
  used = {TEACHER_STAGE[t] for t in config.kd.teachers if not config.kd[t].source}
  return [s for s in STAGES if s in used or s.startswith("student_")]


def stage_config(config: mc.ConfigDict, name: str, workdir: str) -> mc.ConfigDict:
  """The engine config of stage `name` (what W/<name>/config.json holds)."""
  shared = config.to_dict()
  for key in ("stages", "kd", "sweep"):
    shared.pop(key)
  stages = config.stages.to_dict()
  merged = _merge(shared, stages.get(name, {}))
  merged["sweep"] = {}
  if name == "student_kd":
    merged["model"] = _merge(shared["model"], stages.get("student_scratch", {}).get("model", {}))
    merged["loss"] = _merge(kd.defaults().to_dict(), merged["loss"])
    merged["sweep"] = config.sweep.to_dict()
    if config.kd.init_from_scratch:
      merged["train"]["init_from"] = os.path.abspath(os.path.join(workdir, "student_scratch"))
      merged["train"]["init_which"] = config.kd.init_which
    t = teachers.defaults().to_dict()
    t.update(order=tuple(config.kd.teachers), cache=config.kd.cache, cache_gb=config.kd.cache_gb)
    for teacher, stage in TEACHER_STAGE.items():
      model = _merge(shared["model"], stages.get(stage, {}).get("model", {}))
      src = config.kd[teacher].source or os.path.abspath(os.path.join(workdir, stage))
      t[teacher] = {"model": model["name"], "ndim": model["ndim"],
                    "image_size": model["image_size"], "gaf_method": model["gaf_method"],
                    "kwargs": model["kwargs"], "source": src, "which": config.kd[teacher].which}
    merged["teachers"] = t
  return mc.ConfigDict(merged)


def dependencies(config: mc.ConfigDict, name: str) -> set[str]:
  if name != "student_kd":
    return set()
  deps = {TEACHER_STAGE[t] for t in config.kd.teachers if not config.kd[t].source}
  return deps | ({"student_scratch"} if config.kd.init_from_scratch else set())


def _stored(stage_dir: str, name: str) -> Any:
  path = os.path.join(stage_dir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read() if name.endswith("config.json") else json.load(f)


def status(stage_dir: str, cfg: mc.ConfigDict) -> str:
  """'new' (nothing there), 'done' (complete results of this config), 'partial' (this config,
  unfinished: resume) or 'changed' (another config)."""
  old = _stored(stage_dir, "config.json")
  if old is None:
    return "new"
  if old != config_lib.to_json(cfg):
    return "changed"
  res = _stored(stage_dir, "results.json")
  return "done" if res and res.get("epochs_done") == cfg.train.epochs else "partial"


def run(config: mc.ConfigDict, workdir: str, overwrite: bool = False,
        log: Callable[[str], None] = print) -> dict:
  """Train every stage that needs it, then write the report; returns W/results.json's content."""
  from jkd import experiment, parallel   # jax starts here
  _check(config)
  names = stages_to_run(config)
  cfgs = {n: stage_config(config, n, workdir) for n in names}
  for n, cfg in cfgs.items():   # every stage's mistakes surface before the first one trains
    config_lib.validate(cfg)
    if n == "student_kd":
      kd.check(cfg.loss, cfg.train.epochs)
  if parallel.is_writer():
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_lib.to_json(config))
  # The CPU is split once, for the stage with the most runs (every stage has the same folds), so
  # each stage runs on the same devices whether the pipeline started fresh or resumed: XLA:CPU's
  # float results depend on how many devices the process has.
  runs_per_fold = max(len(runs_lib.sweep_points(config_lib.sweep(c))) * len(config_lib.seeds(c))
                      for c in cfgs.values())
  trained: set[str] = set()
  for n in names:
    d = os.path.join(workdir, n)
    st, stale = status(d, cfgs[n]), dependencies(config, n) & trained
    if st == "done" and not stale:
      log(f"[{n}] results for this config exist in {d}: skipped")
      continue
    if st == "changed" and not overwrite:
      raise experiment.WorkdirError(
          f"{d} holds stage {n} of a different config; --overwrite retrains the stages whose "
          "config changed (and those depending on them), keeping the others")
    fresh = st == "changed" or (bool(stale) and st != "new")
    why = {"new": "training", "partial": "resuming", "changed": "config changed: retraining",
           "done": f"retraining ({', '.join(sorted(stale))} retrained)"}[st]
    log(f"[{n}] {why} -> {d}")
    ext = teachers.Distillation(cfgs[n], log) if n == "student_kd" else None
    experiment.train(cfgs[n], d, overwrite=fresh, extension=ext, runs_per_fold=runs_per_fold)
    trained.add(n)
  if not parallel.is_writer():
    return report.build(workdir)
  full = report.write(workdir)
  log(report.summary_table(full))
  log(f"report: {os.path.join(workdir, 'report.md')}")
  return full
