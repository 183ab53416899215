"""A search trained as programs of runs: every point of a rung in ONE program, survivors continuing.

`run(config, workdir)` draws `search.points` points through an Optuna study (ask/tell; the study
lives in `workdir/search.db`, or in `search.storage` shared by several jobs: each job's trials
carry its workdir), in `search.waves` waves: a wave's points are asked, trained rung after rung,
and told before the next wave is asked (so TPE models them):

  W/rung0/   every point x seed x fold, epochs 0 .. rungs[0]       (a jkd workdir, `jkd.engine.loop`)
  W/rung1/   the best 1/eta of them, from their rung0 checkpoints, epochs rungs[0] .. rungs[1]
  ...        the last rung ends at train.epochs
  (with several waves: W/wave<w>/rung<k>/)

A rung's program holds only its points' runs (the compute shrinks) and continues each run's whole
state (optimiser, best-epoch variables, the host's record) from the previous rung's checkpoint; the
LR schedule is that of train.epochs and a run's batches depend on (seed, epoch, step) only, so a
point's epochs are exactly the first epochs of a plain run of that point.

After each rung the points are ranked by validation accuracy (mean over folds and seeds of the
rung's last epoch): `select` reads nothing else. Test accuracies are recorded (search.csv,
search.json) and reported, never ranked. Optuna's SuccessiveHalvingPruner is asynchronous (a trial
reporting first is compared with fewer others), so the synchronous rule of a program that trains
every point together is ours (`survivors`); the pruned and finished trials are told to the study,
with their rung values as intermediate values.

A killed search resumes: the trials are in the study, a rung whose results.json is complete is not
retrained, and a rung cut short resumes from its own newest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Callable

import ml_collections as mc
import numpy as np

from jkd import config as config_lib
from jkd.search import outputs, study as study_lib
from jkd.search import space as space_lib


def rung_config(config: mc.ConfigDict, points: list[dict[str, float]]) -> mc.ConfigDict:
  """The experiment of one rung: `points` as the zipped sweep, no search section."""
  d = config.to_dict()
  d.pop("search")
  cfg = mc.ConfigDict(d)
  zipped = mc.ConfigDict()
  for key in points[0]:
    space_lib.set_key(zipped, key, [p[key] for p in points])
  cfg.sweep = mc.ConfigDict({config_lib.ZIP: zipped})
  return cfg


def per_point(res: dict, num_points: int, per: int, split: str) -> np.ndarray:
  """(num_points,) mean `split` accuracy of the last epoch over each point's runs (folds x seeds;
  program order: run // per), over the runs that did not fail (nan if none)."""
  out = np.full(num_points, np.nan)
  for p in range(num_points):
    accs = [(r["final"]["val"] if split == "val" else r["final"])["accuracy"] for r in res["runs"]
            if r["run"] // per == p and r["status"] == "ok"]
    if accs:
      out[p] = float(np.mean(accs))
  return out


def survivors(val: np.ndarray, eta: int) -> list[int]:
  """The points (indices into `val`) that continue: the best max(1, n // eta) by validation
  accuracy; ties go to the earlier point; a nan (every run failed) ranks last."""
  keep = max(1, len(val) // eta)
  order = sorted(range(len(val)), key=lambda i: (-(val[i] if not math.isnan(val[i]) else -1), i))
  return sorted(order[:keep])


def select(val: np.ndarray, finished: list[int]) -> int:
  """The chosen point: the highest validation accuracy among the points trained to the end (ties:
  the earlier point)."""
  return min(finished, key=lambda i: (-(val[i] if not math.isnan(val[i]) else -1), i))


def _start_from(prev_dir: str, step: int, keep: list[int]) -> Callable:
  """`jkd.engine.loop.train`'s `start_from`: the runs `keep` (run indices of the previous rung's program)
  restored from its checkpoint after `step`, in the new program's order (its padding copies its
  first run, as `jkd.engine.runs.pad` does)."""
  def start(s):
    import jax   # noqa: PLC0415
    import orbax.checkpoint as ocp   # noqa: PLC0415
    from jkd.engine import checkpoint, parallel   # noqa: PLC0415
    idx = np.array(keep + [keep[0]] * (s.num_runs - len(keep)))
    with checkpoint.manager(prev_dir, async_writes=False) as mngr:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      old = len(meta["tracker"]["best_epoch"])
      here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      like = jax.tree.map(lambda a: jax.ShapeDtypeStruct((old, *a.shape[1:]), a.dtype,
                                                         sharding=here), s.abstract_state())
      restored = checkpoint.restore_latest(mngr, like, step)
    if restored is None:
      raise FileNotFoundError(f"{prev_dir}: no checkpoint after epoch {step} to continue from")
    _, state, meta = restored
    state = parallel.shard_runs(jax.tree.map(lambda a: np.asarray(a)[idx], state), s.mesh)
    tracker = {k: np.asarray(v)[idx].tolist() for k, v in meta["tracker"].items()}
    return step, state, {"epoch": step, "tracker": tracker}
  return start


def _rung_done(rdir: str, cfg: mc.ConfigDict, stop: int) -> dict | None:
  from jkd.engine import workdir as workdir_lib   # noqa: PLC0415
  path = os.path.join(rdir, "results.json")
  if not os.path.isfile(path):
    return None
  workdir_lib.check_workdir(cfg, rdir, False)   # the same points: else the search changed
  with open(path) as f:
    res = json.load(f)
  return res if res.get("epochs_done") == stop else None


def clear(config: mc.ConfigDict, workdir: str) -> None:
  """--overwrite: the rungs and the search's outputs (and its SQLite study, if in the workdir)."""
  if not os.path.isdir(workdir):
    return
  for name in os.listdir(workdir):
    p = os.path.join(workdir, name)
    if name.startswith(("rung", "wave")) and os.path.isdir(p):
      shutil.rmtree(p)
    elif name in ("search.csv", "search.json") or (name == "search.db"
                                                    and not config.search.storage):
      os.remove(p)


def rung_dir(workdir: str, wave: int, k: int, num_waves: int) -> str:
  """W/rung<k> (one wave) or W/wave<w>/rung<k>."""
  return os.path.join(workdir, *([f"wave{wave}"] if num_waves > 1 else []), f"rung{k}")


def run(config: mc.ConfigDict, workdir: str, overwrite: bool = False, runs_per_fold: int = 0,
        log: Callable[[str], None] = print) -> dict:
  """Search (see the module docstring); writes search.csv and search.json; returns the summary
  ({} on the processes other than 0 of a multi-process job). The config was checked
  (`jkd.preflight`, `jkd.search.check`).

  Several processes (hosts) train each rung's program together; process 0 alone asks and tells
  the study and writes the outputs, the others receive its points (`study.shared`)."""
  from jkd.engine import parallel   # noqa: PLC0415 - imports jax
  t0 = time.time()
  writer = parallel.is_writer()
  if overwrite and writer:
    clear(config, workdir)
  from jkd.engine import workdir as workdir_lib   # noqa: PLC0415
  workdir_lib.prepare(config, workdir, overwrite)   # (every process waits for it)
  study = study_lib.open_study(config, workdir) if writer else None
  sizes = space_lib.waves(config.search)
  keys = [d.key for d in space_lib.dims(config)]
  P, seeds = config.search.points, len(config_lib.seeds(config))
  stops = space_lib.rungs(config)
  book = {"val": np.full(P, np.nan), "test": np.full(P, np.nan), "epochs": np.zeros(P, np.int64),
          "rungs": [[] for _ in range(P)], "spent": 0, "folds": 0, "history": {}}
  trials: list = []
  points: list = []
  for w, size in enumerate(sizes):
    first = sum(sizes[:w])
    if writer:   # asked after the earlier waves were told
      trials = study_lib.draw(study, config, workdir, first + size)
    points = study_lib.shared([dict(t.user_attrs[study_lib.POINT]) for t in trials], first + size,
                              keys)
    _train_wave(config, workdir, study, trials, points, list(range(first, first + size)), w,
                len(sizes), stops, book, max(sizes[0] * seeds, runs_per_fold), log)
  if not writer:
    return {}
  finished = [i for i in range(P) if book["epochs"][i] == stops[-1]]
  chosen = select(book["val"], finished)
  summary = outputs.summary(config, workdir, points, book, chosen, time.time() - t0)
  outputs.write(workdir, summary)
  outputs.write_winner(workdir, book["history"][chosen], chosen, summary)
  from jkd.search import plots   # noqa: PLC0415 - matplotlib, when installed
  plots.write(workdir, summary)
  log(outputs.table(summary))
  return summary


def _train_wave(config, workdir, study, trials, points, alive, wave, num_waves, stops, book,
                runs_per_fold, log) -> None:
  """One wave's rungs: its points in one program, then the best 1/eta of them, ... to the end;
  every point told (PRUNED, or COMPLETE with its validation accuracy) before returning."""
  from jkd.engine import loop   # noqa: PLC0415 - imports jax
  optuna = study_lib.require_optuna()
  seeds = len(config_lib.seeds(config))
  eta = int(config.search.halving.eta)
  prev, history = None, []
  where = f"wave {wave + 1}/{num_waves}, " if num_waves > 1 else ""
  for k, stop in enumerate(stops):
    rdir = rung_dir(workdir, wave, k, num_waves)
    cfg = rung_config(config, [points[i] for i in alive])
    res = _rung_done(rdir, cfg, stop)
    if res is None:
      start = None if prev is None else _start_from(*prev)
      log(f"search: {where}rung {k + 1}/{len(stops)}: {len(alive)} point(s), epochs "
          f"{stops[k - 1] if k else 0}..{stop}")
      res = loop.train(cfg, rdir, runs_per_fold=runs_per_fold, stop=stop, start_from=start)
    else:
      log(f"search: {where}rung {k + 1}/{len(stops)} is trained ({rdir}); not retraining it")
    per = len(res["runs"]) // len(alive)
    book["folds"] = per // seeds
    v = per_point(res, len(alive), per, "val")
    book["val"][alive] = v
    book["test"][alive] = per_point(res, len(alive), per, "test")   # recorded, never ranked
    book["epochs"][alive] = stop
    book["spent"] += len(alive) * per * (stop - (stops[k - 1] if k else 0))
    history.append((rdir, list(alive), per))
    for j, i in enumerate(alive):
      book["rungs"][i].append([stop, outputs.number(v[j])])
      book["history"][i] = list(history)
      t = trials[i] if study is not None else None   # only process 0 tells the study
      if t and stop not in t.intermediate_values and t.state == optuna.trial.TrialState.RUNNING:
        optuna.trial.Trial(study, t._trial_id).report(float(v[j]), stop)
    if k + 1 < len(stops):
      keep = survivors(v, eta)
      for j, i in enumerate(alive):
        if (study is not None and j not in keep
            and trials[i].state == optuna.trial.TrialState.RUNNING):
          study.tell(trials[i].number, state=optuna.trial.TrialState.PRUNED)
      prev = (rdir, stop, [j * per + r for j in keep for r in range(per)])
      alive = [alive[j] for j in keep]
  for i in alive:
    if study is not None and trials[i].state == optuna.trial.TrialState.RUNNING:
      ok = not math.isnan(book["val"][i])
      study.tell(trials[i].number, float(book["val"][i]) if ok else None,
                 state=None if ok else optuna.trial.TrialState.FAIL)
