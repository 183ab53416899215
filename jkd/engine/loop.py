"""The training loop of an experiment in its workdir (`jkd.engine.workdir`), and `--mode=eval`.

`train(config, workdir)` builds the programs (`jkd.engine.setup`), resumes from the newest checkpoint,
runs the epochs (progress lines with ETAs inside long ones), evaluates every run after each,
keeps each run's best variables, writes metrics.jsonl per epoch, checkpoints, and finally
results.json and confusion.npz (`jkd.engine.results`). The config is checked before (`jkd.preflight`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np

from jkd.engine import checkpoint, parallel, results as results_lib
from jkd.engine import workdir as workdir_lib
from jkd import config as config_lib
from jkd.engine import metrics as metrics_lib
from jkd.engine import optim
from jkd.engine import setup as setup_lib
from jkd.engine import tensorboard as tensorboard_lib
from jkd.engine import train as train_lib


def _runs_json(s: setup_lib.Setup) -> list[dict]:
  return [{"run": r.index, "fold": r.fold, "test_subjects": list(s.folds.test_subjects[r.fold]),
           "val_subjects": list(s.folds.val_subjects[r.fold]) if s.folds.val_subjects else [],
           "seed": r.seed, "sweep": r.sweep} for r in s.runs[:s.real]]


def _score(conf: jax.Array) -> jax.Array:
  """Accuracy per run from confusions (R, K, K), on device."""
  return jnp.trace(conf, axis1=1, axis2=2) / jnp.maximum(conf.sum((1, 2)), 1.0)


def evaluate(s: setup_lib.Setup, variables: Any) -> tuple[Any, Any, Any, Any]:
  """(test confusion, test loss, val confusion | None, val loss | None), on device."""
  conf, loss = s.evaluate(variables, s.data, s.inputs, s.test)
  if s.val is None:
    return conf, loss, None, None
  vconf, vloss = s.evaluate(variables, s.data, s.inputs, s.val)
  return conf, loss, vconf, vloss


def _records(s: setup_lib.Setup, epoch: int, terms: dict, test, tloss, val, vloss,
             failed: np.ndarray) -> list[dict]:
  hp_lr = s.host_hp["optim.lr"]
  factors = np.asarray(jax.vmap(lambda hp: optim.lr_factor(s.config.optim, epoch - 1,
                                                           s.config.train.epochs, hp))(s.host_hp))
  out = []
  for r in s.runs[:s.real]:
    i = r.index
    rec = {"epoch": epoch, "run": i, "fold": r.fold, "seed": r.seed, "sweep": r.sweep,
           "lr": float(hp_lr[i] * factors[i]), "failed": bool(failed[i]),
           "train": {k: float(v[i]) for k, v in terms.items()},
           "test": {"loss": float(tloss[i]), **metrics_lib.summarize(test[i])}}
    if val is not None:
      rec["val"] = {"loss": float(vloss[i]), **metrics_lib.summarize(val[i])}
    out.append(rec)
  return out


def _results(s: setup_lib.Setup, tracker: results_lib.Tracker, epochs_done: int) -> dict:
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


def _write_outputs(workdir: str, s: setup_lib.Setup, tracker: results_lib.Tracker, epochs_done: int) -> dict:
  res = _results(s, tracker, epochs_done)
  if parallel.is_writer():
    from jkd.engine import provenance   # noqa: PLC0415
    results_lib.write(workdir, {**res, "provenance": provenance.collect()})
    tmp = os.path.join(workdir, f"confusion.tmp{os.getpid()}.npz")
    np.savez(tmp, **{k: v[:s.real] for k, v in tracker.a.items() if v.ndim == 3})
    os.replace(tmp, os.path.join(workdir, "confusion.npz"))
  return res


def _log(msg: str) -> None:
  if parallel.is_writer():
    print(msg, flush=True)


PROGRESS_SECONDS = 10.0   # inside an epoch, a progress line at least about this often


class _Progress:
  """Progress lines inside long epochs (stdout, process 0). The epoch runs in chunks of steps of
  about half of PROGRESS_SECONDS each (`jkd.engine.train.Pacer`); after a chunk that ends PROGRESS_SECONDS
  or more after the last line, a line gives the steps done, the running train loss (of this
  process's runs) and the ETAs of the epoch and of the training."""

  def __init__(self, s: setup_lib.Setup, epochs: int):
    self.s, self.epochs = s, epochs
    self.pacer = train_lib.Pacer(PROGRESS_SECONDS / 2)
    self.eval_s = 0.0       # the latest epoch's evaluation, seconds
    self.epoch, self.t_epoch, self.t_line = 0, 0.0, 0.0

  def start(self, epoch: int) -> None:
    self.epoch, self.t_epoch = epoch, time.time()
    self.t_line = self.t_epoch

  def __call__(self, done: int, sums: dict) -> None:
    now, total, per_step = time.time(), self.s.num_batches, self.pacer.per_step
    if self.pacer.calls == 1:
      _log(f"  first step (with compilation) done in {now - self.t_epoch:.1f}s")
      self.t_line = now
    if done == total or now - self.t_line < PROGRESS_SECONDS or not parallel.is_writer():
      return
    self.t_line = now
    eta = ""
    if per_step is not None:
      epoch_left = (total - done) * per_step
      left = epoch_left + self.eval_s + (self.epochs - self.epoch - 1) * (
          total * per_step + self.eval_s)
      eta = f", ETA {epoch_left:.0f}s for the epoch, {left:.0f}s for the training"
    _log(f"  epoch {self.epoch + 1}/{self.epochs}  step {done}/{total}  train loss "
         f"{_local_mean(sums, self.s.real):.4f}  {now - self.t_epoch:.0f}s into the epoch{eta}")


def _local_mean(sums: dict, real: int) -> float:
  """Mean loss over the steps done so far of this process's real runs (no collective)."""
  total = count = 0.0
  for ls, cs in zip(sums["loss"].addressable_shards, sums["count"].addressable_shards):
    lo = ls.index[0].start or 0
    loss, n = np.asarray(ls.data), np.asarray(cs.data)
    keep = np.arange(lo, lo + len(loss)) < real
    total, count = total + float(loss[keep].sum()), count + float(n[keep].sum())
  return total / count if count else float("nan")


def _init_variables(s: setup_lib.Setup) -> Any:
  """Each run's variables from `train.init_from` (its run with the same fold and seed)."""
  src = s.config.train.init_from
  idx = [checkpoint.run_index(src, (r.fold, r.seed)) for r in s.runs]
  return checkpoint.restore_runs(src, idx, s.config.train.init_which)


def train(config: mc.ConfigDict, workdir: str, overwrite: bool = False,
          runs_per_fold: int = 0, stop: int | None = None,
          start_from: Callable[[setup_lib.Setup], tuple[int, Any, dict]] | None = None) -> dict:
  """Train every run (resuming from the newest checkpoint), write results; returns them.

  A config with a `distill` section trains a distillation stage (`jkd.engine.setup.build`);
  `runs_per_fold`: see there. The config and the workdir were checked (`jkd.preflight`).
  `stop`: train only the first `stop` epochs of the `train.epochs` schedule (checkpointed at
  `stop`; results after `stop` epochs). `start_from(setup) -> (epoch, state, meta)`: where a
  workdir without checkpoints starts (a search's rung continuing the survivors of the previous
  one, `jkd.search`), instead of fresh runs."""
  t_setup = time.time()
  s = setup_lib.build(config, runs_per_fold, _log)
  workdir_lib.prepare(config, workdir, overwrite)
  if parallel.is_writer():
    metrics_lib.write_atomic(os.path.join(workdir, "runs.json"),
                             json.dumps(_runs_json(s), indent=1))
  E, B = config.train.epochs, config.train.batch_size
  end = E if stop is None else stop
  _log(f"{s.real} runs ({len(s.folds.train)} folds x {len(config_lib.seeds(config))} seeds x "
       f"{s.real // (len(s.folds.train) * len(config_lib.seeds(config)))} sweep points) on "
       f"{s.mesh.size} device(s) in {jax.process_count()} process(es); {s.num_batches} steps of "
       f"{B} per epoch; data {tuple(s.data.x.shape)} ({time.time() - t_setup:.1f}s to load)")
  tracker = results_lib.Tracker(s.num_runs, s.num_classes, s.val is not None)
  log = metrics_lib.JsonLines(os.path.join(workdir, "metrics.jsonl"), parallel.is_writer())
  keep = tuple(config.train.keep_epochs)
  mngr = checkpoint.manager(workdir, config.train.keep_checkpoints, keep_epochs=keep)
  start = 0
  restored = checkpoint.restore_latest(mngr, s.abstract_state())
  if restored is None and start_from is not None:
    restored = start_from(s)
  if restored is not None:
    start, state, meta = restored
    tracker.load(meta["tracker"])
    _log(f"resumed from the checkpoint after epoch {start}")
  else:
    state = s.init_state(_init_variables(s) if config.train.init_from else None)
  log.truncate(start)
  board = (tensorboard_lib.Board(workdir, start)
           if tensorboard_lib.enabled(config) and parallel.is_writer() and start < end else None)
  progress, durations = _Progress(s, end), []
  if start < end:
    _log(f"compiling the {s.num_runs}-run training step (first epoch includes compilation) ...")
  for e in range(start, end):
    t_epoch = time.time()
    progress.start(e)
    state, terms = s.train_epoch.run(state, s.data, s.inputs, e, pacer=progress.pacer,
                                     report=progress)
    t_eval = time.time()
    test, tloss, val, vloss = evaluate(s, state.variables)
    state, improved = train_lib.update_best(state, _score(val if val is not None else test))
    host = parallel.to_host({"terms": terms, "test": test, "tloss": tloss, "val": val,
                             "vloss": vloss, "improved": improved, "failed": state.failed})
    progress.eval_s = time.time() - t_eval
    newly = tracker.update(e + 1, host["test"], host["val"], host["improved"], host["failed"])
    records = _records(s, e + 1, host["terms"], host["test"], host["tloss"], host["val"],
                       host["vloss"], host["failed"])
    log.write(records)
    if board is not None:
      board.write(records)
    for i in np.flatnonzero(newly[:s.real]):
      _log(f"run {i} ({s.runs[i].describe()}) stopped: non-finite loss or gradient in epoch "
           f"{e + 1}; its last good state is kept, other runs continue")
    if (e + 1) % config.train.checkpoint_every == 0 or e + 1 in (E, end) or e + 1 in keep:
      checkpoint.save(mngr, e + 1, state, {"epoch": e + 1, "tracker": tracker.to_json()})
    samples = float(host["terms"]["steps"][:s.real].sum()) * B
    now = time.time()
    durations.append(now - t_epoch)
    if len(durations) > 1:
      per_epoch = np.mean(durations[1:])           # the first epoch also compiled
    elif progress.pacer.per_step is not None:      # after it: its measured step time
      per_epoch = s.num_batches * progress.pacer.per_step + progress.eval_s
    else:
      per_epoch = durations[0]
    acc = np.array([metrics_lib.accuracy(c) for c in host["test"][:s.real]])
    alive = ~host["failed"][:s.real]
    loss = host["terms"]["loss"][:s.real][alive].mean() if alive.any() else float("nan")
    _log(f"epoch {e + 1}/{E}  train loss {loss:.4f}  test acc {acc.mean():.4f} "
         f"[{acc.min():.3f}, {acc.max():.3f}]  {sum(durations):.0f}s elapsed, ETA "
         f"{per_epoch * (end - e - 1):.0f}s, {samples / (now - t_epoch):.0f} samples/s")
  mngr.wait_until_finished()
  mngr.close()
  res = _write_outputs(workdir, s, tracker, end)
  _log(results_lib.table(res))
  return res


def evaluate_checkpoint(config: mc.ConfigDict, workdir: str, step: int | None = None,
                        which: str = "last") -> dict:
  """`--mode=eval`: restore a saved step and evaluate every run; writes eval_step{N}.json."""
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
