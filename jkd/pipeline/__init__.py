"""The distillation pipeline: teachers → student from scratch → KD students, each stage on the engine.

A config with a `stages` section is a pipeline (`jkd.main` dispatches it here):

  teachers.<name>        every teacher (`jkd.engine.teachers`: model, source, which, epoch, weight); one
                         with source '' is trained by the stage teacher_<name> -> W/teacher_<name>/
  stages.teacher_<name>  what that teacher's stage changes of the shared sections (optional)
  stages.student_scratch the student with CE only (the baseline, and the lab's "annealing"
                         initialisation)                              -> W/student_scratch/
  stages.<kd stage>      any number of distillation stages, each with a `distill` section
                         (`distill.teachers`: its teachers, in weight order; `init_from_scratch`,
                         `init_which`, `cache`, `cache_gb`), its `loss` (`jkd.distill`: the terms
                         and their keys) and its `sweep`                -> W/<kd stage>/

The top-level `model`/`train`/`optim`/`loss`/`augment` sections are shared defaults. A stage's
`train`/`optim`/`loss`/`augment` (and student_scratch's `model`) hold every key as None, meaning
"as the shared section": `--config.stages.teacher_image.train.epochs=30` sets one. KD stages use
student_scratch's model (the same student).

Each stage trains every run (folds x seeds x sweep) in one program and is skipped when its workdir
already holds complete results for the same stage config; a stage whose config changed is refused
unless `--overwrite`, which retrains only the changed stages (and those that depend on a retrained
one). Every stage config and every external teacher source is checked before the first stage
trains (`jkd.preflight`). Afterwards `jkd.report` writes W/results.json, W/report.md and W/plots/.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import ml_collections as mc

from jkd import config as config_lib
from jkd import distill, report
from jkd import search
from jkd.engine import teachers

SCRATCH = "student_scratch"
SECTIONS = ("train", "optim", "loss", "augment")


def is_pipeline(config: mc.ConfigDict) -> bool:
  return "stages" in config


def inheriting(section: mc.ConfigDict) -> mc.ConfigDict:
  """`section`'s keys, each None ("as the shared section") but typed, so overrides parse."""
  out = mc.ConfigDict()
  for k, v in section.items():
    if isinstance(v, mc.ConfigDict):
      out[k] = inheriting(v) if v else mc.ConfigDict()
    else:
      out[k] = mc.FieldReference(None, field_type=type(v) if not isinstance(v, float) else float)
  return out


def teacher_stage(shared: mc.ConfigDict) -> mc.ConfigDict:
  return mc.ConfigDict({s: inheriting(shared[s]) for s in SECTIONS})


def kd_stage(shared: mc.ConfigDict, teacher_names: tuple[str, ...],
             terms: tuple[str, ...] = ("ce", "kd")) -> mc.ConfigDict:
  """A distillation stage taught by `teacher_names` with the loss terms `terms` at defaults."""
  c = mc.ConfigDict({s: inheriting(shared[s]) for s in ("train", "optim", "augment")})
  c.distill = mc.ConfigDict({"teachers": tuple(teacher_names), "init_from_scratch": True,
                             "init_which": "last", "cache": True, "cache_gb": 2.0})
  c.loss = distill.loss_defaults(terms)
  c.sweep = mc.ConfigDict()
  return c


def base(data: mc.ConfigDict) -> mc.ConfigDict:
  """Engine defaults plus the pipeline sections; configs/*_spkd.py start here."""
  c = config_lib.base(data)
  c.teachers = mc.ConfigDict({
      "signal": teachers.spec({"name": "wrn16_1", "ndim": 1}),
      "image": teachers.spec({"name": "wrn16_1", "ndim": 2, "image_size": 64}),
  })
  c.stages = mc.ConfigDict({
      "teacher_signal": teacher_stage(c), "teacher_image": teacher_stage(c),
      SCRATCH: mc.ConfigDict({"model": inheriting(c.model), **teacher_stage(c)}),
      "student_kd": kd_stage(c, ("signal", "image")),
  })
  return c


def add_teacher(config: mc.ConfigDict, name: str, model: dict, **kw) -> None:
  """Declare teacher `name` (and its optional stage teacher_<name>)."""
  config.teachers[name] = teachers.spec(model, **kw)
  config.stages[f"teacher_{name}"] = teacher_stage(config)


def add_early_teacher(config: mc.ConfigDict, name: str, of: str, epoch: int) -> None:
  """Teacher `name`: teacher `of` as its stage's checkpoint after `epoch` (ESKD's early-stopped
  teacher, Cho & Hariharan ICCV 2019); that stage keeps the checkpoint."""
  config.teachers[name] = teachers.spec(config.teachers[of].model.to_dict(), source=f"@{of}",
                                        epoch=epoch)


def _internal(source: str) -> str:
  """The teacher whose stage a source '@<teacher>' names, else ''."""
  return source[1:] if source.startswith("@") else ""


def add_kd_stage(config: mc.ConfigDict, name: str, teacher_names: tuple[str, ...],
                 terms: tuple[str, ...] = ("ce", "kd")) -> mc.ConfigDict:
  config.stages[name] = kd_stage(config, teacher_names, terms)
  return config.stages[name]


def kd_stages(config: mc.ConfigDict) -> list[str]:
  return [n for n, s in config.stages.items() if "distill" in s]


def _merge(base: dict, over: dict) -> dict:
  """`over` on `base`; None in `over` keeps `base`'s value."""
  out = dict(base)
  for k, v in over.items():
    if v is None:
      continue
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def check_structure(config: mc.ConfigDict) -> None:
  """The pipeline's stages and teachers fit together (one-line ConfigErrors; `jkd.preflight`)."""
  if config.sweep.to_dict():
    raise config_lib.ConfigError("sweep: a pipeline sweeps inside a distillation stage; set "
                                 "stages.<stage>.sweep (e.g. stages.student_kd.sweep)")
  if "search" in config:
    raise config_lib.ConfigError("search: a pipeline searches inside a distillation stage; set "
                                 "stages.<stage>.search (e.g. stages.student_kd.search)")
  if SCRATCH not in config.stages:
    raise config_lib.ConfigError(f"stages.{SCRATCH} is missing: the pipeline needs the student "
                                 "trained from scratch (its baseline)")
  for name, st in config.stages.items():
    is_kd, is_teacher = "distill" in st, name.startswith("teacher_")
    if is_teacher and name[len("teacher_"):] not in config.teachers:
      raise config_lib.ConfigError(f"stages.{name}: no teachers.{name[len('teacher_'):]} is "
                                   "declared; declare it or drop the stage")
    if not is_kd and not is_teacher and name != SCRATCH:
      raise config_lib.ConfigError(f"stages.{name} is neither teacher_<name>, {SCRATCH} nor a "
                                   "distillation stage (a `distill` section)")
    if "search" in st and not is_kd:
      raise config_lib.ConfigError(f"stages.{name}.search: only a distillation stage searches "
                                   "(its teachers and scratch student are trained once)")
    if "model" in st and name != SCRATCH:
      raise config_lib.ConfigError(
          f"stages.{name}.model: a teacher's model is teachers.<name>.model and the KD student "
          f"is {SCRATCH}'s; set those instead")
    if is_kd:
      for t in st.distill.teachers:
        if t not in config.teachers:
          raise config_lib.ConfigError(
              f"stages.{name}.distill.teachers names {t!r} but teachers.{t} is not declared; "
              f"declared: {', '.join(config.teachers)}")
  for t, s in config.teachers.items():
    of = _internal(s.source)
    if of and (of not in config.teachers or _internal(config.teachers[of].source)):
      raise config_lib.ConfigError(f"teachers.{t}.source={s.source!r}: '@<name>' names another "
                                   "declared teacher (not itself an '@' one)")
  if not kd_stages(config):
    raise config_lib.ConfigError("the pipeline has no distillation stage (a stage with a "
                                 "`distill` section)")


def used_teachers(config: mc.ConfigDict) -> list[str]:
  """Teachers some KD stage uses (and those whose stage an '@' source names), in order."""
  used = {t for n in kd_stages(config) for t in config.stages[n].distill.teachers}
  used |= {_internal(config.teachers[t].source) for t in used} - {""}
  return [t for t in config.teachers if t in used]


def _trained(config: mc.ConfigDict, teacher: str) -> bool:
  return not config.teachers[teacher].source


def stages_to_run(config: mc.ConfigDict) -> list[str]:
  """Teacher stages of the teachers used and not imported, the scratch student, the KD stages."""
  trained = [f"teacher_{t}" for t in used_teachers(config) if _trained(config, t)]
  return trained + [SCRATCH] + kd_stages(config)


def _shared(config: mc.ConfigDict) -> dict:
  shared = config.to_dict()
  for key in ("stages", "teachers", "sweep"):
    shared.pop(key)
  return shared


def _early_epochs(config: mc.ConfigDict, teacher: str) -> tuple[int, ...]:
  """Epochs whose checkpoints teacher `teacher`'s stage must keep (its own `epoch` and those of
  teachers naming it with '@')."""
  epochs = {int(s.epoch) for n, s in config.teachers.items()
            if n == teacher or _internal(s.source) == teacher}
  return tuple(sorted(epochs - {0}))


def stage_config(config: mc.ConfigDict, name: str, workdir: str) -> mc.ConfigDict:
  """The engine config of stage `name` (what W/<name>/config.json holds)."""
  shared = _shared(config)
  stage = config.stages[name].to_dict()
  merged = _merge(shared, {k: stage[k] for k in SECTIONS if k in stage and k != "loss"})
  merged["sweep"] = {}
  if name.startswith("teacher_"):
    t = name[len("teacher_"):]
    merged["model"] = config.teachers[t].model.to_dict()
    merged["loss"] = _merge(shared["loss"], stage.get("loss", {}))
    keep = _early_epochs(config, t)
    if keep:
      merged["train"]["keep_epochs"] = tuple(sorted(set(merged["train"]["keep_epochs"]) | set(keep)))
  elif name == SCRATCH:
    merged["model"] = _merge(shared["model"], stage.get("model", {}))
    merged["loss"] = _merge(shared["loss"], stage.get("loss", {}))
  else:
    merged["model"] = _merge(shared["model"], config.stages[SCRATCH].to_dict().get("model", {}))
    merged["loss"] = stage["loss"]
    merged["sweep"] = stage["sweep"]
    if stage.get("search", {}).get("space"):
      merged["search"] = stage["search"]
    d = stage["distill"]
    if d["init_from_scratch"]:
      merged["train"]["init_from"] = os.path.abspath(os.path.join(workdir, SCRATCH))
      merged["train"]["init_which"] = d["init_which"]
    merged["distill"] = {"teachers": tuple(d["teachers"]), "cache": d["cache"],
                         "cache_gb": d["cache_gb"]}
    ts = {}
    for t in d["teachers"]:
      spec = config.teachers[t].to_dict()
      of = _internal(spec["source"]) or t
      spec["source"] = (config.teachers[of].source if of != t else spec["source"]) or (
          os.path.abspath(os.path.join(workdir, f"teacher_{of}")))
      ts[t] = spec
    merged["teachers"] = ts
  return mc.ConfigDict(merged)


def dependencies(config: mc.ConfigDict, name: str) -> set[str]:
  if name not in kd_stages(config):
    return set()
  st = config.stages[name]
  of = [_internal(config.teachers[t].source) or t for t in st.distill.teachers]
  deps = {f"teacher_{t}" for t in of if _trained(config, t)}
  return deps | ({SCRATCH} if st.distill.init_from_scratch else set())


def _stored(stage_dir: str, name: str) -> Any:
  path = os.path.join(stage_dir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _resolved(cfg: dict) -> dict:
  """A stage config (JSON) with the stage directories it reads resolved through symlinks: a
  table's column reads a stage shared with another column through a link (`jkd.pipeline.columns`)."""
  real = lambda p: os.path.realpath(p) if isinstance(p, str) and os.path.isabs(p) else p
  cfg = json.loads(json.dumps(cfg))
  if cfg.get("train", {}).get("init_from"):
    cfg["train"]["init_from"] = real(cfg["train"]["init_from"])
  for spec in (cfg.get("teachers") or {}).values():
    if isinstance(spec, dict) and spec.get("source"):
      spec["source"] = real(spec["source"])
  return cfg


def status(stage_dir: str, cfg: mc.ConfigDict) -> str:
  """'new', 'partial' (resumable), 'done' (complete results for this config) or 'changed'."""
  stored = _stored(stage_dir, "config.json")
  if stored is None:
    return "new"
  new = json.loads(config_lib.to_json(cfg))
  if not config_lib.same_experiment(_resolved(stored), _resolved(new)):
    return "changed"
  res = _stored(stage_dir, "results.json")
  return "done" if res and res.get("epochs_done") == cfg.train.epochs else "partial"


def run(config: mc.ConfigDict, workdir: str, overwrite: bool = False,
        log: Callable[[str], None] = print, retrained: set[str] = frozenset()) -> dict:
  """Train every stage that needs it, then write the report; returns W/results.json's content.
  The pipeline, its stages and their teachers were checked (`jkd.preflight`). `retrained`: stages
  trained elsewhere in this command (a table's shared stages, `jkd.pipeline.columns`): up to date
  themselves, their dependents retrain as if this run had trained them."""
  from jkd.engine import loop, parallel   # jax starts here
  from jkd.engine.workdir import WorkdirError
  names = stages_to_run(config)
  cfgs = {n: stage_config(config, n, workdir) for n in names}
  if parallel.is_writer():
    os.makedirs(workdir, exist_ok=True)
    from jkd.engine.metrics import write_atomic
    write_atomic(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    write_atomic(os.path.join(workdir, "stages.json"), json.dumps(names))
    import jkd.data   # the class names, for the figures (loaded already by the preflight)
    write_atomic(os.path.join(workdir, "classes.json"),
                 json.dumps([str(c) for c in jkd.data.load(config.data).classes]))
  # The CPU is split once, for the stage with the most runs (every stage has the same folds), so
  # each stage runs on the same devices whether the pipeline started fresh or resumed: XLA:CPU's
  # float results depend on how many devices the process has.
  runs_per_fold = max(search.num_points(c) * len(config_lib.seeds(c)) for c in cfgs.values())
  trained: set[str] = set(retrained)
  for n in names:
    d = os.path.join(workdir, n)
    st, stale = status(d, cfgs[n]), dependencies(config, n) & trained
    if n in retrained:   # trained in this command already, after its dependencies
      stale = set()
    if st == "done" and not stale:
      log(f"[{n}] results for this config exist in {d}: skipped")
      continue
    if st == "changed" and not overwrite:
      raise WorkdirError(
          f"{d} holds stage {n} of a different config; --overwrite retrains the stages whose "
          "config changed (and those depending on them), keeping the others")
    fresh = st == "changed" or (bool(stale) and st != "new")
    why = {"new": "training", "partial": "resuming", "changed": "config changed: retraining",
           "done": f"retraining ({', '.join(sorted(stale))} retrained)"}[st]
    log(f"[{n}] {why} -> {d}")
    if search.is_search(cfgs[n]):
      search.run(cfgs[n], d, overwrite=fresh, runs_per_fold=runs_per_fold, log=log)
    else:
      loop.train(cfgs[n], d, overwrite=fresh, runs_per_fold=runs_per_fold)
    trained.add(n)
  if not parallel.is_writer():
    return report.build(workdir)
  full = report.write(workdir)
  log(report.summary_table(full))
  log(f"report: {os.path.join(workdir, 'report.md')}")
  return full


def lab_loss(loss: mc.ConfigDict, *, lam: float = 0.99, alpha: float = 0.5, beta: float = 0.0,
             temperature: float = 4.0) -> mc.ConfigDict:
  """The lab's dual-teacher objective on a KD stage's `loss` (docs/protocol.md §4):
  `(1 − λ)·CE + λ·[(1 − α)·KD_1 + α·KD_2] + β·SP` with PyTorch `KLDivLoss()`'s 'mean' reduction and
  SP summed over the three WRN stages; SP is listed only when β > 0 (sweeping `loss.sp.weight`
  needs it listed: pass the largest β here)."""
  loss.terms = ("ce", "kd", "sp") if beta else ("ce", "kd")
  loss.ce.weight = 1.0 - lam
  loss.kd.weight = lam
  loss.kd.temperature = temperature
  loss.kd.reduction = "mean"
  loss.alpha = alpha
  if beta:
    loss.sp.weight = beta
    loss.sp.layers = (1, 2, 3)
  return loss
