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
_IMPORT = flags.DEFINE_multi_string(
    "import", [], "a module of your own loss terms (it calls jkd.distill.register), imported "
                  "before the config is read; repeatable; recorded in the config (`imports`)")


def _fail(msg: str) -> None:
  print(f"jkd.main: {' '.join(str(msg).split())}", file=sys.stderr)
  sys.exit(2)


# The data source that --config.data.name chose (None: the config file's own), and the config
# file's config as _check_override_keys loaded it (to say what a key takes).
_data_source: list[str | None] = [None]
_loaded: list = [None]
# The user's term modules imported (--import, and those a workdir's config.json records).
_imported: list[str] = []


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
      if "imports" in config:
        config.imports = tuple(dict.fromkeys((*config.imports, *_imported)))
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


def _flag_values(argv: list[str], name: str) -> list[str]:
  """Every `--NAME=V` (or `--NAME V`) value in argv, in order."""
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      out.append(arg.split("=", 1)[1])
    elif arg == f"--{name}" and i + 1 < len(argv):
      out.append(argv[i + 1])
  return out


def _import_terms(argv: list[str]) -> None:
  """Import the user's term modules before any config is read (so that `loss_defaults` holds
  their sections): those --import names and those the workdir's config.json records."""
  import importlib   # noqa: PLC0415
  _imported.clear()
  names = list(_flag_values(argv, "import"))
  workdirs = _flag_values(argv, "workdir")
  recorded = os.path.join(workdirs[-1], "config.json") if workdirs else ""
  if recorded and os.path.isfile(recorded):
    try:
      with open(recorded) as f:
        names += [n for n in json.load(f).get("imports", ()) if isinstance(n, str)]
    except (OSError, ValueError, AttributeError):
      pass   # an unreadable config.json is the workdir check's to report
  if "" not in sys.path:
    sys.path.insert(0, "")   # the current directory, as `python -m` and `python script.py` do
  for name in dict.fromkeys(names):
    try:
      importlib.import_module(name)
    except ImportError as e:
      where = f"{recorded} records it; " if name not in _flag_values(argv, "import") else ""
      _fail(f"--import={name}: {e}; {where}put the module in the current directory or on "
            "PYTHONPATH")
    _imported.append(name)


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
  _import_terms(argv)
  _check_override_keys(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    _fail(_flag_error(e))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}")
  if _WORKDIR.value is None:
    _fail("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
  import jkd.data
  from jkd.pipeline import columns
  from jkd.engine import loop, parallel, results
  from jkd import pipeline, preflight   # jax starts here
  from jkd import search
  parallel.initialize(_COORD.value, _NPROC.value, _PID.value)
  if _MODE.value == "report":
    from jkd import report
    from jkd.report import paper_table, workdirs
    try:
      if workdirs.is_table_workdir(_WORKDIR.value):
        print(paper_table.console(paper_table.write(_WORKDIR.value)))
      elif report.is_pipeline_workdir(_WORKDIR.value):
        print(report.summary_table(report.write(_WORKDIR.value)))
      else:
        print(results.table(results.read(_WORKDIR.value)))
    except (FileNotFoundError, workdirs.TableError) as e:
      _fail(str(e))
    return
  config = _CONFIG.value
  if config is None:
    _fail("--config is required (e.g. --config=configs/watch.py)")
  with jkd.data.keep_loaded():
    try:
      preflight.run(config, _WORKDIR.value, mode=_MODE.value, overwrite=_OVERWRITE.value,
                    step=_STEP.value)
    except preflight.USER_ERRORS as e:
      _fail(str(e))
    # Past the preflight every error is a bug: it keeps its traceback.
    if columns.is_table(config):
      columns.run(config, _WORKDIR.value, _OVERWRITE.value)
    elif pipeline.is_pipeline(config):
      pipeline.run(config, _WORKDIR.value, _OVERWRITE.value)
    elif search.is_search(config) and _MODE.value == "train":
      search.run(config, _WORKDIR.value, _OVERWRITE.value)
    elif _MODE.value == "eval":
      loop.evaluate_checkpoint(config, _WORKDIR.value, _STEP.value, _WHICH.value)
    else:
      loop.train(config, _WORKDIR.value, _OVERWRITE.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
