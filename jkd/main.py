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

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

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
  print(f"jkd.main: {msg}", file=sys.stderr)
  sys.exit(2)


def _check_override_keys(argv: list[str]) -> None:
  """Unknown `--config.KEY` overrides -> one line with the closest keys (before absl parses)."""
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
  for arg in argv:
    m = re.match(r"--config\.([\w.]+)", arg)
    if m and not m.group(1).startswith("sweep."):
      try:
        config_lib.get(config, m.group(1))
      except config_lib.ConfigError as e:
        _fail(str(e))


def parse_flags(argv: list[str]) -> list[str]:
  _check_override_keys(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    _fail(f"bad flag: {' '.join(str(e).split())}")


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
    from jkd import report
    try:
      if report.is_pipeline_workdir(_WORKDIR.value):
        print(report.summary_table(report.write(_WORKDIR.value)))
      else:
        print(results.table(results.read(_WORKDIR.value)))
    except FileNotFoundError as e:
      _fail(str(e))
    return
  if _CONFIG.value is None:
    _fail("--config is required (e.g. --config=configs/watch.py)")
  from jkd import pipeline
  try:
    if pipeline.is_pipeline(_CONFIG.value):
      if _MODE.value == "eval":
        _fail("--mode=eval evaluates one stage: pass --workdir=W/<stage> and that stage's "
              "config (W/<stage>/config.json)")
      pipeline.run(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
    elif _MODE.value == "eval":
      experiment.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value, _WHICH.value)
    else:
      experiment.train(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
  except (config_lib.ConfigError, experiment.WorkdirError, jkd.data.DataError,
          FileNotFoundError, convert.CheckpointError) as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
