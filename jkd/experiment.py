"""Train, evaluate and report an experiment in a workdir (what `jkd.main` runs).

Workdir layout (only process 0 writes):
  config.json      the full resolved config; a different config refuses to start unless overwriting
  runs.json        run index -> fold, test subjects, seed, sweep point
  metrics.jsonl    one record per run per epoch: train loss terms, lr, test (and val) metrics
  checkpoints/     orbax checkpoints (periodic + last; each holds every run's best variables)
  results.json     final/best metrics per run and their summary (`jkd.results`)
  confusion.npz    confusion matrices per run: final_test, best_test (+ final_val, best_val)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from jax.experimental import multihost_utils

from jkd import checkpoint, parallel, results as results_lib
from jkd import config as config_lib
from jkd import metrics as metrics_lib
from jkd import optim
from jkd import setup as setup_lib
from jkd import train as train_lib


class WorkdirError(RuntimeError):
  """The workdir holds another experiment; the message says how to proceed."""


OUTPUTS = ("checkpoints", "metrics.jsonl", "results.json", "confusion.npz", "runs.json")


def prepare_workdir(config: mc.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Create the workdir, or check it holds this config; `overwrite` discards what it holds."""
  path = os.path.join(workdir, "config.json")
  text = config_lib.to_json(config)
  if os.path.exists(path) and not overwrite:
    with open(path) as f:
      old = f.read()
    if old != text:
      diff = _diff(json.loads(old), json.loads(text))
      raise WorkdirError(f"{workdir} holds a different config ({diff}); use another --workdir, or "
                         "--overwrite to discard its checkpoints and results")
  if overwrite and parallel.is_writer():
    for name in OUTPUTS:
      p = os.path.join(workdir, name)
      if os.path.isdir(p):
        shutil.rmtree(p)
      elif os.path.exists(p):
        os.remove(p)
  if parallel.is_writer():
    os.makedirs(workdir, exist_ok=True)
    metrics_lib.write_atomic(path, text)
  if parallel.process_count() > 1:
    multihost_utils.sync_global_devices("jkd: workdir ready")


def _diff(old: dict, new: dict) -> str:
  a, b = dict(config_lib.flat(old)), dict(config_lib.flat(new))
  keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:3]) + (
      f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _runs_json(s: setup_lib.Setup) -> list[dict]:
  return [{"run": r.index, "fold": r.fold, "test_subjects": list(s.folds.test_subjects[r.fold]),
           "val_subjects": list(s.folds.val_subjects[r.fold]) if s.folds.val_subjects else [],
           "seed": r.seed, "sweep": r.sweep} for r in s.runs[:s.real]]


class Tracker:
  """Host-side record per run: confusions at the final and best epochs, failures."""

  def __init__(self, runs: int, k: int, val: bool):
    z = lambda: np.zeros((runs, k, k), np.int64)
    self.a = {"best_epoch": np.zeros(runs, np.int64), "failed_epoch": np.zeros(runs, np.int64),
              "final_test": z(), "best_test": z()}
    if val:
      self.a |= {"final_val": z(), "best_val": z()}

  def update(self, epoch: int, test: np.ndarray, val: np.ndarray | None, improved: np.ndarray,
             failed: np.ndarray) -> np.ndarray:
    """Record epoch `epoch` (1-based); returns the runs that failed during it."""
    newly = failed & (self.a["failed_epoch"] == 0)
    self.a["failed_epoch"][newly] = epoch
    self.a["final_test"] = test.astype(np.int64)
    self.a["best_test"][improved] = test[improved]
    self.a["best_epoch"][improved] = epoch
    if val is not None:
      self.a["final_val"] = val.astype(np.int64)
      self.a["best_val"][improved] = val[improved]
    return newly

  def to_json(self) -> dict:
    return {k: v.tolist() for k, v in self.a.items()}

  def load(self, meta: dict) -> None:
    self.a = {k: np.asarray(meta[k], np.int64) for k in self.a}


def _score(conf: jax.Array) -> jax.Array:
  """Accuracy per run from confusions (R, K, K), on device."""
  return jnp.trace(conf, axis1=1, axis2=2) / jnp.maximum(conf.sum((1, 2)), 1.0)


def evaluate(s: setup_lib.Setup, variables: Any) -> tuple[Any, Any, Any, Any]:
  """(test confusion, test loss, val confusion | None, val loss | None), on device."""
  conf, loss = s.evaluate(variables, s.x, s.y, *s.test, s.inputs.mean, s.inputs.std)
  if s.val is None:
    return conf, loss, None, None
  vconf, vloss = s.evaluate(variables, s.x, s.y, *s.val, s.inputs.mean, s.inputs.std)
  return conf, loss, vconf, vloss


def _records(s: setup_lib.Setup, epoch: int, terms: dict, test, tloss, val, vloss,
             failed: np.ndarray) -> list[dict]:
  lr_factor = float(optim.lr_factor(s.config.optim, epoch - 1, s.config.train.epochs))
  hp_lr = s.host_hp["optim.lr"]
  out = []
  for r in s.runs[:s.real]:
    i = r.index
    rec = {"epoch": epoch, "run": i, "fold": r.fold, "seed": r.seed, "sweep": r.sweep,
           "lr": float(hp_lr[i] * lr_factor), "failed": bool(failed[i]),
           "train": {k: float(v[i]) for k, v in terms.items()},
           "test": {"loss": float(tloss[i]), **metrics_lib.summarize(test[i])}}
    if val is not None:
      rec["val"] = {"loss": float(vloss[i]), **metrics_lib.summarize(val[i])}
    out.append(rec)
  return out


def _results(s: setup_lib.Setup, tracker: Tracker, epochs_done: int) -> dict:
  a, runs = tracker.a, []
  for info in _runs_json(s):
    i = info["run"]
    entry = {**info, "final": metrics_lib.summarize(a["final_test"][i]),
             "best": {**metrics_lib.summarize(a["best_test"][i]), "epoch": int(a["best_epoch"][i])}}
    if "final_val" in a:
      entry["final"]["val"] = metrics_lib.summarize(a["final_val"][i])
      entry["best"]["val"] = metrics_lib.summarize(a["best_val"][i])
    if a["failed_epoch"][i]:
      entry["status"] = "failed"
      entry["error"] = (f"non-finite loss or gradient in epoch {a['failed_epoch'][i]}; the run "
                        "stopped there and keeps its last good state")
    else:
      entry["status"] = "ok"
    runs.append(entry)
  c = s.config
  experiment = {"data": c.data.name, "model": c.model.name, "ndim": c.model.ndim,
                "epochs": c.train.epochs, "num_classes": s.num_classes}
  return results_lib.build(runs, epochs_done=epochs_done, experiment=experiment,
                           selected_by="val" if s.val is not None else "test")


def _write_outputs(workdir: str, s: setup_lib.Setup, tracker: Tracker, epochs_done: int) -> dict:
  res = _results(s, tracker, epochs_done)
  if parallel.is_writer():
    results_lib.write(workdir, res)
    tmp = os.path.join(workdir, f"confusion.tmp{os.getpid()}.npz")
    np.savez(tmp, **{k: v[:s.real] for k, v in tracker.a.items() if v.ndim == 3})
    os.replace(tmp, os.path.join(workdir, "confusion.npz"))
  return res


def _log(msg: str) -> None:
  if parallel.is_writer():
    print(msg, flush=True)


def _init_variables(s: setup_lib.Setup) -> Any:
  """Each run's variables from `train.init_from` (its run with the same fold and seed)."""
  src = s.config.train.init_from
  idx = [checkpoint.run_index(src, (r.fold, r.seed)) for r in s.runs]
  return checkpoint.restore_runs(src, idx, s.config.train.init_which)


def train(config: mc.ConfigDict, workdir: str, overwrite: bool = False,
          extension: Any = None, runs_per_fold: int = 0) -> dict:
  """Train every run (resuming from the newest checkpoint), write results; returns them.

  `extension`, `runs_per_fold`: see `jkd.setup.build` (e.g. frozen teachers for distillation)."""
  config_lib.validate(config)
  prepare_workdir(config, workdir, overwrite)
  t_setup = time.time()
  s = setup_lib.build(config, extension, runs_per_fold)
  if parallel.is_writer():
    metrics_lib.write_atomic(os.path.join(workdir, "runs.json"),
                             json.dumps(_runs_json(s), indent=1))
  E, B = config.train.epochs, config.train.batch_size
  _log(f"{s.real} runs ({len(s.folds.train)} folds x {len(config_lib.seeds(config))} seeds x "
       f"{s.real // (len(s.folds.train) * len(config_lib.seeds(config)))} sweep points) on "
       f"{s.mesh.size} device(s) in {jax.process_count()} process(es); {s.num_batches} steps of "
       f"{B} per epoch; data {tuple(s.x.shape)} ({time.time() - t_setup:.1f}s to load)")
  tracker = Tracker(s.num_runs, s.num_classes, s.val is not None)
  log = metrics_lib.JsonLines(os.path.join(workdir, "metrics.jsonl"), parallel.is_writer())
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
  start = 0
  restored = checkpoint.restore_latest(mngr, s.abstract_state())
  if restored is not None:
    start, state, meta = restored
    tracker.load(meta["tracker"])
    _log(f"resumed from the checkpoint after epoch {start}")
  else:
    state = s.init_state(_init_variables(s) if config.train.init_from else None)
  log.truncate(start)
  t0, done_samples = time.time(), 0
  if start < E:
    _log(f"compiling the {s.num_runs}-run training step (first epoch includes compilation) ...")
  for e in range(start, E):
    t_epoch = time.time()
    state, terms = s.train_epoch(state, s.x, s.y, s.inputs, jnp.int32(e), s.aux)
    test, tloss, val, vloss = evaluate(s, state.variables)
    state, improved = train_lib.update_best(state, _score(val if val is not None else test))
    host = parallel.to_host({"terms": terms, "test": test, "tloss": tloss, "val": val,
                             "vloss": vloss, "improved": improved, "failed": state.failed})
    newly = tracker.update(e + 1, host["test"], host["val"], host["improved"], host["failed"])
    log.write(_records(s, e + 1, host["terms"], host["test"], host["tloss"], host["val"],
                       host["vloss"], host["failed"]))
    for i in np.flatnonzero(newly[:s.real]):
      _log(f"run {i} ({s.runs[i].describe()}) stopped: non-finite loss or gradient in epoch "
           f"{e + 1}; its last good state is kept, other runs continue")
    if (e + 1) % config.train.checkpoint_every == 0 or e + 1 == E:
      checkpoint.save(mngr, e + 1, state, {"epoch": e + 1, "tracker": tracker.to_json()})
    samples = float(host["terms"]["steps"][:s.real].sum()) * B
    done_samples += samples
    now = time.time()
    acc = np.array([metrics_lib.accuracy(c) for c in host["test"][:s.real]])
    alive = ~host["failed"][:s.real]
    loss = host["terms"]["loss"][:s.real][alive].mean() if alive.any() else float("nan")
    _log(f"epoch {e + 1}/{E}  train loss {loss:.4f}  test acc {acc.mean():.4f} "
         f"[{acc.min():.3f}, {acc.max():.3f}]  {now - t0:.0f}s elapsed, ETA "
         f"{(now - t0) / (e + 1 - start) * (E - e - 1):.0f}s, {samples / (now - t_epoch):.0f} "
         f"samples/s")
  mngr.wait_until_finished()
  mngr.close()
  res = _write_outputs(workdir, s, tracker, E)
  _log(results_lib.table(res))
  return res


def evaluate_checkpoint(config: mc.ConfigDict, workdir: str, step: int | None = None,
                        which: str = "last") -> dict:
  """`--mode=eval`: restore a saved step and evaluate every run; writes eval_step{N}.json."""
  config_lib.validate(config)
  s = setup_lib.build(config)
  with checkpoint.manager(workdir, config.train.keep_checkpoints) as mngr:
    restored = checkpoint.restore_latest(mngr, s.abstract_state(), step)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint under {checkpoint.directory(workdir)}")
  step, state, _ = restored
  variables = state.variables if which == "last" else state.best
  test, _, val, _ = parallel.to_host(evaluate(s, variables))
  out = {"step": step, "which": which, "runs": []}
  for info in _runs_json(s):
    i = info["run"]
    entry = {**info, "test": metrics_lib.summarize(test[i])}
    if val is not None:
      entry["val"] = metrics_lib.summarize(val[i])
    out["runs"].append(entry)
  accs = np.array([r["test"]["accuracy"] for r in out["runs"]])
  out["test_accuracy"] = {"mean": float(accs.mean()), "std": float(accs.std())}
  if parallel.is_writer():
    metrics_lib.write_atomic(os.path.join(workdir, f"eval_step{step}_{which}.json"),
                             json.dumps(out, indent=1))
  for r in out["runs"]:
    _log(f"run {r['run']:>3} fold {r['fold']:>2} seed {r['seed']:>6} test acc "
         f"{100 * r['test']['accuracy']:.2f} F1 {100 * r['test']['macro_f1']:.2f}")
  _log(f"step {step} ({which} variables): test accuracy {100 * accs.mean():.2f} ± "
       f"{100 * accs.std():.2f} % over {len(accs)} runs")
  return out
