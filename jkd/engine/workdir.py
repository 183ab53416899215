"""A workdir's policy: what may be written where, checked before anything is.

Layout (only process 0 writes):
  config.json      the full resolved config; a different config refuses to start unless overwriting
  runs.json        run index -> fold, test subjects, seed, sweep point
  metrics.jsonl    one record per run per epoch: train loss terms, lr, test (and val) metrics
  checkpoints/     orbax checkpoints (periodic + last; each holds every run's best variables)
  results.json     final/best metrics per run and their summary (`jkd.engine.results`)
  confusion.npz    confusion matrices per run: final_test, best_test (+ final_val, best_val)

The `check_*` functions write nothing (`jkd.preflight` runs them before training); `prepare`
creates the workdir or clears it (`--overwrite`) and writes config.json.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_collections as mc
from jax.experimental import multihost_utils

from jkd.engine import checkpoint, parallel
from jkd import config as config_lib
from jkd.engine import metrics as metrics_lib


class WorkdirError(RuntimeError):
  """The workdir holds another experiment; the message says how to proceed."""


OUTPUTS = ("checkpoints", "metrics.jsonl", "results.json", "confusion.npz", "runs.json")


def check_path(workdir: str) -> None:
  """The workdir is a directory that can be written, or can be created; writes nothing."""
  if not workdir:
    raise WorkdirError("--workdir is empty; pass a directory (created if absent)")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; pass a directory path "
                       "(created if absent)")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"--workdir={workdir}: {existing} is a file, so the workdir cannot be "
                       "created under it; pass another --workdir")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
    raise WorkdirError(f"--workdir={workdir} {what}; pass a --workdir you can write to")


def check_workdir(config: mc.ConfigDict, workdir: str, overwrite: bool) -> None:
  """What `prepare_workdir` would refuse, without writing anything."""
  check_path(workdir)
  path = os.path.join(workdir, "config.json")
  if os.path.isfile(path) and not overwrite:
    text = config_lib.to_json(config)
    try:
      with open(path) as f:
        old_text = f.read()
      old = json.loads(old_text)
      if not isinstance(old, dict):
        raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
      raise WorkdirError(f"{path} is unreadable ({type(e).__name__}: {' '.join(str(e).split())}); "
                         "use another --workdir, or --overwrite to discard what it holds") from None
    if old_text != text and not config_lib.same_experiment(old, json.loads(text)):
      diff = config_lib.diff(old, json.loads(text))
      raise WorkdirError(f"{workdir} holds a different config ({diff}); use another --workdir, or "
                         "--overwrite to discard its checkpoints and results")


def check_checkpoints(workdir: str, step: int | None = None) -> None:
  """`--mode=eval`: the workdir holds a checkpoint (at `step`); reads only directory names."""
  d = checkpoint.directory(workdir)
  steps = sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []
  if not steps:
    raise WorkdirError(f"--mode=eval: no checkpoint under {d}; train first (--mode=train with the "
                       "same --config and --workdir), or pass the --workdir that holds one")
  if step is not None and step not in steps:
    raise WorkdirError(f"--step={step}: no checkpoint at that step under {d}; saved steps: "
                       f"{steps} (omit --step for the newest)")


def check_init_from(config: mc.ConfigDict) -> None:
  """`train.init_from` names a jkd workdir with runs and a checkpoint."""
  src = config.train.init_from
  if src and not (os.path.isfile(os.path.join(src, "runs.json"))
                  and os.path.isdir(checkpoint.directory(src))):
    raise WorkdirError(f"train.init_from={src!r} is not a trained jkd workdir (no runs.json and "
                       "checkpoints/ there); point --config.train.init_from at one, or set it to ''")


def prepare(config: mc.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Create the workdir, or check it holds this config; `overwrite` discards what it holds."""
  check_workdir(config, workdir, overwrite)
  path = os.path.join(workdir, "config.json")
  try:
    if overwrite and parallel.is_writer():
      for name in OUTPUTS:
        p = os.path.join(workdir, name)
        if os.path.isdir(p):
          shutil.rmtree(p)
        elif os.path.exists(p):
          os.remove(p)
    if parallel.is_writer():
      os.makedirs(workdir, exist_ok=True)
      metrics_lib.write_atomic(path, config_lib.to_json(config))
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir}: cannot write there ({e.strerror or e}); pass a "
                       "--workdir you can write to") from None
  if parallel.process_count() > 1:
    multihost_utils.sync_global_devices("jkd: workdir ready")
