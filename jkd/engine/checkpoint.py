"""Checkpoints under `workdir/checkpoints` (orbax CheckpointManager, asynchronous writes).

A checkpoint at step e (= epochs completed) holds the whole train state of every run — including
each run's best-epoch variables (`state.best`) — plus a JSON `meta` item (the host-side record of
best epochs, confusion matrices and failures). Periodic checkpoints every `train.checkpoint_every`
epochs and the last epoch are kept (`train.keep_checkpoints` most recent). A checkpoint that fails
to restore (damaged files) is skipped with a warning in favour of the previous one.

`restore_run(workdir, run)` returns one run's student variables for use elsewhere (a teacher, an
initialisation; without the trainable parts of distillation terms), with `run` an index or a `(fold, seed)` / `(fold, seed, sweep)` tuple.
`restore_run(..., distill=True)` keeps those parts too (under `params['distill'][term]` and
`batch_stats['distill'][term]`): a SimKD student predicts through its projector and the copy of
its teacher's classifier held there, not through its own fc (`jkd.distill.make_predict`, as
`jkd.engine.train.make_evaluate` applies it).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, keep: int = 3, async_writes: bool = True,
            keep_epochs: tuple[int, ...] = ()) -> ocp.CheckpointManager:
  """`keep` most recent checkpoints, plus those after `keep_epochs` (never deleted: e.g. the
  early teacher of ESKD)."""
  if keep_epochs:
    from orbax.checkpoint import checkpoint_managers as cm
    policy = cm.AnyPreservationPolicy([cm.LatestN(keep), cm.CustomSteps(list(keep_epochs))])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                           enable_async_checkpointing=async_writes)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_writes)
  return ocp.CheckpointManager(directory(workdir), options=options,
                               item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def restore_latest(mngr: ocp.CheckpointManager, like: Any, step: int | None = None
                   ) -> tuple[int, Any, dict] | None:
  """(step, state, meta) of `step`, else of the newest checkpoint that restores; None if none.

  `like`: the state's structure with shapes, dtypes and shardings (arrays or ShapeDtypeStructs).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise ValueError(f"no checkpoint at step {step} under {mngr.directory}; saved steps: "
                       f"{sorted(steps)}")
    steps = [step]
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  for s in steps:
    try:
      out = mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                    meta=ocp.args.JsonRestore()))
      return s, out["state"], out["meta"]
    except Exception as e:  # noqa: BLE001 - any damage means: fall back to an older one
      if step is not None:
        raise
      logging.warning("checkpoint %d under %s cannot be restored (%s: %s); falling back to the "
                      "previous one", s, mngr.directory, type(e).__name__, str(e)[:200])
  return None


def steps(workdir: str) -> list[int]:
  """The epochs after which `workdir` holds a checkpoint (none: [])."""
  d = directory(workdir)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def read_runs(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "runs.json")) as f:
    return json.load(f)


def run_index(workdir: str, run: int | tuple) -> int:
  runs = read_runs(workdir)
  if isinstance(run, int):
    if not 0 <= run < len(runs):
      raise ValueError(f"run {run} out of range: {workdir} has {len(runs)} runs")
    return run
  fold, seed, *rest = run
  sweep = rest[0] if rest else None
  for r in runs:
    if r["fold"] == fold and r["seed"] == seed and (sweep is None or r["sweep"] == dict(sweep)):
      return r["run"]
  raise ValueError(f"no run with fold={fold} seed={seed}"
                   f"{'' if sweep is None else f' sweep={sweep}'} in {workdir}/runs.json")


def _restore_raw(workdir: str, step: int | None) -> dict:
  with ocp.CheckpointManager(directory(workdir), item_names=("state", "meta")) as mngr:
    steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"no checkpoints under {directory(workdir)}")
    # Saved on other devices (e.g. one CPU device per run): restore onto this process's first.
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restore = ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=here))
    for s in steps:
      try:
        return mngr.restore(s, args=restore)["state"]
      except Exception as e:  # noqa: BLE001
        if step is not None or s == steps[-1]:
          raise
        logging.warning("checkpoint %d cannot be restored (%s); trying the previous one", s, e)


def restore_runs(workdir: str, indices: list[int], which: str = "last", step: int | None = None,
                 distill: bool = False) -> dict:
  """Variables of runs `indices`, stacked along a leading axis (numpy); the student alone unless
  `distill` (then with the distillation terms' parts, `DISTILL`)."""
  if which not in ("last", "best"):
    raise ValueError(f"which must be 'last' or 'best', got {which!r}")
  state = _restore_raw(workdir, step)
  variables = state["best"] if which == "best" else {"params": state["params"],
                                                      "batch_stats": state["batch_stats"]}
  if not distill:
    variables = student_variables(variables)
  return jax.tree.map(lambda a: np.asarray(a)[np.asarray(indices)], variables)


DISTILL = "distill"   # the top-level key of a distillation term's trainable parts


def student_variables(variables: dict) -> dict:
  """`{'params', 'batch_stats'}` without the distillation terms' parts (regressors, projectors):
  the student alone, as evaluation, a teacher or an initialisation uses it."""
  return {k: {n: v for n, v in tree.items() if n != DISTILL} for k, tree in variables.items()}


def restore_run(workdir: str, run: int | tuple, which: str = "last", step: int | None = None,
                distill: bool = False) -> dict:
  """One run's `{'params', 'batch_stats'}` ('last': the state at the checkpoint; 'best': its best
  epoch so far) from the newest (or given) checkpoint of `workdir`, as numpy arrays: the student
  alone, or with `distill=True` also its distillation terms' parts (`params['distill']`,
  `batch_stats['distill']`; what a SimKD student needs to predict, see the module docstring)."""
  stacked = restore_runs(workdir, [run_index(workdir, run)], which, step, distill)
  return jax.tree.map(lambda a: a[0], stacked)
