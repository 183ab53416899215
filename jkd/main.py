"""Command line: `python -m jkd.main --config=configs/X.py --workdir=DIR [--mode=...]`.

Modes: train (default; resumes from the last checkpoint), eval, report.

A config with a `stages` section (configs/demo.py, configs/pamap_spkd.py) is a distillation
pipeline (`jkd.pipeline`): every stage trains into W/<stage>/, trained stages are skipped, and
W/report.md summarises them; `--mode=report` rewrites that report from the workdir alone.

Any config key can be overridden: `--config.train.epochs=5`, `--config.train.seeds=3` (trials) or
`--config.train.seeds='(1,2,3)'`, `--config.sweep='{"optim": {"lr": [0.05, 0.01]}}'`. An unknown
key or a bad value stops with one line naming it (exit status 2).

Multi-host: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on every process
(see launch/); without them one process uses every local device.
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as _config_flags_impl

from jkd import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and results")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "report"],
                          "train (resumes if possible), eval (restore a checkpoint and evaluate), "
                          "report (print the results table; a pipeline workdir: rewrite report.md)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                                "discard the checkpoints and results in --workdir and start over")
_STEP = flags.DEFINE_integer("step", None,
                             "--mode=eval: checkpoint step (epochs done); default newest")
_WHICH = flags.DEFINE_enum("which", "last", ["last", "best"], "--mode=eval: variables to evaluate")
_COORD = flags.DEFINE_string("coordinator_address", "", "multi-host: HOST:PORT of process 0")
_NPROC = flags.DEFINE_integer("num_processes", 0, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", -1, "multi-host: this process's index")


def _fail(msg: str) -> None:
  print(f"jkd.main: {' '.join(str(msg).split())}", file=sys.stderr)
  sys.exit(2)


# The data source that --config.data.name chose (None: the config file's own), and the config
# file's config as _check_override_keys loaded it (to say what a key takes).
_data_source: list[str | None] = [None]
_loaded: list = [None]


class _ConfigFileParser(_config_flags_impl.ConfigFileFlagParser):
  """absl's config-file parser, then `data` re-based on the source --config.data.name names (its
  keys and defaults; the file's keys are those of the source it was written for), then locked:
  absl applies the overrides after this."""

  def parse(self, path):
    config = super().parse(path)
    if isinstance(config, config_lib.mc.ConfigDict):
      if _data_source[0] is not None and _data_source[0] != config.data.name:
        dropped = config_lib.rebase_data(config, _data_source[0])
        if dropped:
          print(f"jkd.main: --config.data.name={_data_source[0]}: the data section of "
                f"{path} does not apply ({', '.join(dropped)}); the {_data_source[0]} defaults "
                "do, with your --config.data overrides", flush=True)
      config.lock()
    return config


flags.FLAGS["config"].parser = _ConfigFileParser(name="config", lock_config=False)


def _override_value(argv: list[str], key: str) -> str | None:
  """The last `--config.KEY=V` (or `--config.KEY V`) value in argv."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--config.{key}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--config.{key}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _unknown_data_key(key: str, config, e: Exception) -> str:
  import jkd.data   # noqa: PLC0415
  owners = jkd.data.sources_with_key(key.split(".", 1)[1].split(".")[0])
  if not owners:
    return str(e)
  return (f"{e}; data.{key.split('.')[1]} is a key of source(s) {', '.join(owners)}, not of "
          f"data.name={config.data.name!r}: set --config.data.name first")


def _check_override_keys(argv: list[str]) -> None:
  """Unknown `--config.KEY` overrides -> one line with the closest keys (before absl parses)."""
  _data_source[0] = _loaded[0] = None
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None:
    return
  if not os.path.isfile(path.split(":")[0]):
    _fail(f"--config={path}: no such file (run from the repository root, e.g. "
          "--config=configs/watch.py)")
  try:
    config = config_lib.load_file(path)
  except Exception:  # noqa: BLE001 - absl reports a broken config file with the full story below
    return
  name = _data_source[0] = _override_value(argv, "data.name")
  if name is not None and isinstance(config, config_lib.mc.ConfigDict) and "data" in config:
    import jkd.data   # noqa: PLC0415
    if name not in jkd.data.SOURCES:
      _fail(f"--config.data.name={name!r} is not a data source; choose one of "
            f"{', '.join(sorted(jkd.data.SOURCES))}")
    if name != config.data.name:
      config_lib.rebase_data(config, name)
  _loaded[0] = config
  for arg in argv:
    m = re.match(r"--config\.([\w.]+)", arg)
    if m and not m.group(1).startswith("sweep."):
      try:
        config_lib.get(config, m.group(1))
      except config_lib.ConfigError as e:
        _fail(_unknown_data_key(m.group(1), config, e) if m.group(1).startswith("data.")
              else str(e))


def _flag_error(e: Exception) -> str:
  """absl's message, with what the key takes (a bad value) or the config key meant (a flag)."""
  msg = " ".join(str(e).split())
  config = _loaded[0]
  m = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", msg)
  if m and config is not None:
    try:
      current = config_lib.get(config, m.group(1))
    except config_lib.ConfigError:
      return f"bad flag: {msg}"
    kind = "a tuple, e.g. '(1,2)'" if isinstance(current, tuple) else (
        f"a {type(current).__name__}" if current is not None else "a value")
    return (f"--config.{m.group(1)}={m.group(2)}: {m.group(3)}; {m.group(1)} takes {kind} "
            f"(its value in the config file: {current!r})")
  m = re.match(r"Unknown command line flag '(\w+)'", msg)
  if m:
    near = [k for k, _ in config_lib.flat(config)] if config is not None else []
    near = [k for k in near if k.split(".")[-1] == m.group(1)][:3]
    hint = (f"; did you mean {' or '.join(f'--config.{k}' for k in near)}?" if near else
            "; config keys go as --config.SECTION.KEY=VALUE, and --help lists the flags")
    return f"unknown flag --{m.group(1)}{hint}"
  return f"bad flag: {msg}"


def parse_flags(argv: list[str]) -> list[str]:
  _check_override_keys(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    _fail(_flag_error(e))


def _views(config, workdir: str = "") -> list:
  """(stage name or '', engine config): the config itself, or for a pipeline each stage's engine
  config (`jkd.pipeline.stage_config`) — what `check_fit` checks against the data."""
  from jkd import pipeline   # noqa: PLC0415
  if not pipeline.is_pipeline(config):
    return [("", config)]
  try:
    return [(n, pipeline.stage_config(config, n, workdir)) for n in pipeline.stages_to_run(config)]
  except (KeyError, AttributeError, TypeError, ValueError):
    return []   # a malformed pipeline: `pipeline.run` says what is wrong with it, first


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
    return f"stages.student_scratch.{key}"
  return f"stages.{stage}.{key}"


def in_stage(stage: str, msg: str) -> str:
  """A stage config's one-line message with its keys as the pipeline config spells them."""
  out, n = _SECTION.subn(lambda m: ("--config." if m.group(1) else "")
                        + stage_key(stage, m.group(2)), msg)
  return out if n else f"stage {stage}: {msg}"


def _check_stage_dir(stage_dir: str, name: str, view) -> None:
  """A pipeline stage's workdir holds this stage config or none (what `pipeline.run` refuses only
  after it wrote W/config.json), read-only."""
  from jkd import experiment, pipeline   # noqa: PLC0415
  path = os.path.join(stage_dir, "config.json")
  try:
    changed = pipeline.status(stage_dir, view) == "changed"
    if changed:
      with open(path) as f:
        old = json.load(f)
  except (OSError, ValueError) as e:
    raise experiment.WorkdirError(f"{path} is unreadable ({type(e).__name__}: {e}); use another "
                                  "--workdir, or --overwrite to retrain that stage") from None
  if changed:
    diff = experiment._diff(old, json.loads(config_lib.to_json(view)))
    raise experiment.WorkdirError(
        f"{stage_dir} holds stage {name} of a different config ({diff}); use another --workdir, "
        "or --overwrite to retrain the stages whose config changed (and those depending on them), "
        "keeping the others")


def _preflight(config, workdir: str) -> None:
  """A table config (`jkd.columns`): every column as a pipeline in W/<column>/."""
  from jkd import columns   # noqa: PLC0415
  if columns.is_table(config):
    for key, _, c in columns.expand(config):
      _preflight_one(c, os.path.join(workdir, columns.dirname(key)))
    return
  _preflight_one(config, workdir)


def _preflight_one(config, workdir: str) -> None:
  """Everything the inputs alone show to be wrong, before anything is written or trained: the
  config's values (a pipeline's every stage), the workdir, the data, the folds against the batch
  sizes and augmentations. The windows stay loaded for the training (`jkd.data.keep_loaded`)."""
  import jkd.data   # noqa: PLC0415
  from jkd import experiment, pipeline   # noqa: PLC0415
  from jkd.data import folds as folds_lib   # noqa: PLC0415
  is_pipeline = pipeline.is_pipeline(config)
  experiment.check_path(workdir)
  config_lib.validate(config, check_sweep=not is_pipeline)  # a pipeline's sweep: its KD stage's
  if _MODE.value == "eval":
    experiment.check_checkpoints(workdir, _STEP.value)
  elif not is_pipeline:
    experiment.check_workdir(config, workdir, _OVERWRITE.value)
    experiment.check_init_from(config)
  views = _views(config, workdir)
  for name, view in views if is_pipeline else ():
    try:
      pipeline.check_stage(view)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(in_stage(name, str(e))) from None
    if not _OVERWRITE.value:
      _check_stage_dir(os.path.join(workdir, name), name, view)
  windows = jkd.data.load(config.data)
  counts = folds_lib.train_counts(windows.subject, config.data)
  for name, view in views:
    try:
      config_lib.check_fit(view, windows.x.shape[2], windows.x.shape[1], counts)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(in_stage(name, str(e)) if name else str(e)) from None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}")
  if _WORKDIR.value is None:
    _fail("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
  import jkd.data
  from jkd import convert, experiment, parallel, results   # after flags: jax starts here
  parallel.initialize(_COORD.value, _NPROC.value, _PID.value)
  if _MODE.value == "report":
    from jkd import columns, paper_table, report
    try:
      if columns.is_table_workdir(_WORKDIR.value):
        print(paper_table.console(paper_table.write(_WORKDIR.value)))
      elif report.is_pipeline_workdir(_WORKDIR.value):
        print(report.summary_table(report.write(_WORKDIR.value)))
      else:
        print(results.table(results.read(_WORKDIR.value)))
    except (FileNotFoundError, columns.TableError) as e:
      _fail(str(e))
    return
  if _CONFIG.value is None:
    _fail("--config is required (e.g. --config=configs/watch.py)")
  from jkd import pipeline
  if pipeline.is_pipeline(_CONFIG.value) and _MODE.value == "eval":
    _fail("--mode=eval evaluates one stage: pass --workdir=W/<stage> and that stage's "
          "config (W/<stage>/config.json)")
  started = experiment.trainings_started
  try:
    with jkd.data.keep_loaded():
      _preflight(_CONFIG.value, _WORKDIR.value)
      from jkd import columns
      if columns.is_table(_CONFIG.value):
        columns.run(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
      elif pipeline.is_pipeline(_CONFIG.value):
        pipeline.run(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
      elif _MODE.value == "eval":
        experiment.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value, _WHICH.value)
      else:
        experiment.train(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
  except (config_lib.ConfigError, experiment.WorkdirError, jkd.data.DataError,
          FileNotFoundError, convert.CheckpointError) as e:
    _fail(str(e))
  except ValueError as e:
    # Raised while the configs were checked or the programs built, before any training began:
    # a value the user chose (e.g. a KD loss setting) that its own module refused.
    if experiment.trainings_started != started:
      raise
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
