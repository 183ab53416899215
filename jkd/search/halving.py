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

import csv
import io
import json
import math
import os
import shutil
import time
from typing import Any, Callable

import ml_collections as mc
import numpy as np

from jkd import config as config_lib
from jkd.engine import metrics as metrics_lib
from jkd.search import space as space_lib

OWNER = "jkd_workdir"     # trial user attr: the workdir whose search drew the trial
POINT = "jkd_point"       # trial user attr: the point (dotted key -> value)


def require_optuna() -> Any:
  try:
    import optuna   # noqa: PLC0415
  except ImportError:
    raise config_lib.ConfigError("a search needs Optuna, the optional extra 'search': "
                                 "pip install -e '.[search]'") from None
  return optuna


def storage_url(config: mc.ConfigDict, workdir: str) -> str:
  return config.search.storage or f"sqlite:///{os.path.join(os.path.abspath(workdir), 'search.db')}"


def _sampler(optuna: Any, s: mc.ConfigDict) -> Any:
  import warnings   # noqa: PLC0415
  if s.sampler == "random":
    return optuna.samplers.RandomSampler(seed=s.seed)
  if s.sampler == "qmc":
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")   # experimental
      return optuna.samplers.QMCSampler(seed=s.seed, scramble=True, warn_independent_sampling=False)
  # The first wave at random (its start-up); each later wave models every trial told before it
  # was asked (a pruned one ranks below the finished ones, by its last rung).
  return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=space_lib.waves(s)[0])


def open_study(config: mc.ConfigDict, workdir: str) -> Any:
  optuna = require_optuna()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna.create_study(storage=storage_url(config, workdir), study_name=config.search.study,
                             sampler=_sampler(optuna, config.search), direction="maximize",
                             load_if_exists=True)


def _mine(study: Any, workdir: str) -> list:
  owner = os.path.abspath(workdir)
  return sorted((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(OWNER) == owner),
                key=lambda t: t.number)


def draw(study: Any, config: mc.ConfigDict, workdir: str, upto: int = 0) -> list:
  """This workdir's first `upto` trials (default `search.points`), drawing the missing ones: distinct
  points."""
  upto = upto or config.search.points
  optuna = require_optuna()
  dims = space_lib.dims(config)
  mine = _mine(study, workdir)
  seen = {tuple(sorted(t.user_attrs[POINT].items())) for t in mine}
  tries = 0
  while len(mine) < upto:
    trial = study.ask()
    point = space_lib.suggest(trial, dims)
    key = tuple(sorted(point.items()))
    if key in seen:   # an int/choice space drew a point again: it would train twice
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      tries += 1
      if tries > 100 * upto:
        raise config_lib.ConfigError(f"search.points={config.search.points}: the space holds "
                                     f"fewer distinct points ({len(seen)} drawn); lower it")
      continue
    seen.add(key)
    trial.set_user_attr(OWNER, os.path.abspath(workdir))
    trial.set_user_attr(POINT, point)
    mine = _mine(study, workdir)
  return mine[:upto]


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
  the study and writes the outputs, the others receive its points (`_shared`)."""
  from jkd.engine import parallel   # noqa: PLC0415 - imports jax
  optuna = require_optuna()
  t0 = time.time()
  writer = parallel.is_writer()
  if overwrite and writer:
    clear(config, workdir)
  from jkd.engine import workdir as workdir_lib   # noqa: PLC0415
  workdir_lib.prepare(config, workdir, overwrite)   # (every process waits for it)
  study = open_study(config, workdir) if writer else None
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
      trials = draw(study, config, workdir, first + size)
    points = _shared([dict(t.user_attrs[POINT]) for t in trials], first + size, keys)
    _train_wave(config, workdir, study, trials, points, list(range(first, first + size)), w,
                len(sizes), stops, book, max(sizes[0] * seeds, runs_per_fold), log, optuna)
  if not writer:
    return {}
  finished = [i for i in range(P) if book["epochs"][i] == stops[-1]]
  chosen = select(book["val"], finished)
  summary = _summary(config, points, book, chosen, P * seeds * book["folds"] * stops[-1], stops,
                     sizes, time.time() - t0)
  rdir, alive, per = book["history"][chosen][-1]
  summary["winner_runs"] = {"workdir": os.path.relpath(rdir, workdir),   # its checkpoints
                            "first": alive.index(chosen) * per, "count": per}
  write(workdir, summary)
  write_winner(workdir, book["history"][chosen], chosen, summary)
  from jkd.search import plots   # noqa: PLC0415 - matplotlib, when installed
  plots.write(workdir, summary)
  log(table(summary))
  return summary


def _shared(points: list[dict], n: int, keys: list[str]) -> list[dict]:
  """Process 0's `n` points on every process (bit for bit: float64 sent as int32 pairs)."""
  from jkd.engine import parallel   # noqa: PLC0415
  if parallel.process_count() == 1:
    return points
  from jax.experimental import multihost_utils   # noqa: PLC0415
  table_ = np.zeros((n, len(keys)), np.float64)
  if parallel.is_writer():
    table_[:] = [[p[k] for k in keys] for p in points]
  got = np.asarray(multihost_utils.broadcast_one_to_all(table_.view(np.int32)))
  return [dict(zip(keys, map(float, row))) for row in got.view(np.float64)]


def _train_wave(config, workdir, study, trials, points, alive, wave, num_waves, stops, book,
                runs_per_fold, log, optuna) -> None:
  """One wave's rungs: its points in one program, then the best 1/eta of them, ... to the end;
  every point told (PRUNED, or COMPLETE with its validation accuracy) before returning."""
  from jkd.engine import loop   # noqa: PLC0415 - imports jax
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
      book["rungs"][i].append([stop, _f(v[j])])
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


def write_winner(workdir: str, history: list, chosen: int, summary: dict) -> None:
  """The chosen point's runs as a jkd workdir's outputs in `workdir` (results.json, runs.json,
  metrics.jsonl over every rung it trained in): what a plain run of that point writes, so a
  pipeline's report (`jkd.report`) reads a search stage as any other; results.json also holds
  the search's summary under `search`."""
  from jkd.engine import results as results_lib   # noqa: PLC0415
  records, res = [], None
  for rdir, alive, per in history:
    if chosen not in alive:
      break
    j = alive.index(chosen)
    mine = lambda i: j * per <= i < (j + 1) * per
    with open(os.path.join(rdir, "metrics.jsonl")) as f:
      records += [{**r, "run": r["run"] - j * per} for r in map(json.loads, f) if mine(r["run"])]
    with open(os.path.join(rdir, "results.json")) as f:
      res = json.load(f)
    with open(os.path.join(rdir, "runs.json")) as f:
      runs = [{**r, "run": r["run"] - j * per} for r in json.load(f) if mine(r["run"])]
  picked = [{**r, "run": r["run"] - j * per} for r in res["runs"] if mine(r["run"])]
  out = results_lib.build(picked, epochs_done=res["epochs_done"], experiment=res["experiment"],
                          selected_by=res["best_selected_by"])
  out["search"] = {k: summary[k] for k in ("chosen", "winner", "winner_test_accuracy",
                                           "run_epochs", "run_epochs_without_halving", "rungs")}
  metrics_lib.write_atomic(os.path.join(workdir, "metrics.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in records))
  metrics_lib.write_atomic(os.path.join(workdir, "runs.json"), json.dumps(runs, indent=1))
  results_lib.write(workdir, out)


def markdown(workdir: str) -> str:
  """The report's section on every searched stage of a pipeline workdir ('' if none)."""
  out, figures = [], []
  for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
    path = os.path.join(workdir, name, "search.json")
    if not os.path.isfile(path):
      continue
    figures += [f"![{name} {f}]({name}/plots/{f}.png)" for f in ("search_keys", "search_rungs")
                if os.path.isfile(os.path.join(workdir, name, "plots", f + ".png"))]
    with open(path) as f:
      s = json.load(f)
    a = s["winner_test_accuracy"]
    w = ", ".join(f"{k}={v:.4g}" for k, v in s["winner"].items())
    out.append(f"| {name} | {len(s['points'])} | {w} | "
               f"{100 * a['final']['mean']:.2f} ± {100 * a['final']['lab_pm']:.2f} | "
               f"{100 * a['best']['mean']:.2f} ± {100 * a['best']['lab_pm']:.2f} | "
               f"{s['run_epochs']} / {s['run_epochs_without_halving']} |")
  if not out:
    return ""
  return "\n".join(["", "## Searches (chosen on validation accuracy; test never read)", "",
                    "Each searched stage's rows above are its chosen point's runs; every point is "
                    "in W/<stage>/search.csv. Test accuracy with the lab's ±.", "",
                    "| stage | points | chosen | final test acc | best-epoch test acc | "
                    "run-epochs (search / every point to the end) |", "|---|---|---|---|---|---|",
                    *out, *([""] + figures if figures else [])]) + "\n"


def _key(point: dict) -> str:
  return " ".join(f"{k}={v:g}" for k, v in sorted(point.items()))   # as jkd.report keys a point


def _summary(config, points, book, chosen, full, stops, sizes, seconds) -> dict:
  from jkd.report import stats   # noqa: PLC0415
  winner = points[chosen]
  with open(os.path.join(book["history"][chosen][-1][0], "results.json")) as f:
    res = json.load(f)   # the winner's last rung
  entry = next(e for e in res["summary"] if e["sweep"] == winner)
  acc = {w: {**entry[w]["accuracy"], "lab_pm": stats.lab_pm(res, _key(winner), w)}
         for w in ("final", "best")}
  wave = [w for w, n in enumerate(sizes) for _ in range(n)]
  epochs = book["epochs"]
  rows = [{"point": i, **points[i], "wave": wave[i], "epochs": int(epochs[i]),
           "pruned": bool(epochs[i] < stops[-1]), "val_accuracy": _f(book["val"][i]),
           "test_accuracy": _f(book["test"][i]), "chosen": i == chosen,
           "val_by_rung": book["rungs"][i]} for i in range(len(points))]
  return {"selected_by": "val", "keys": list(winner),
          "space": {d.key: d.kind for d in space_lib.dims(config)}, "rungs": stops,
          "eta": int(config.search.halving.eta) if len(stops) > 1 else None,
          "sampler": config.search.sampler, "waves": sizes, "points": rows, "chosen": chosen,
          "winner": winner, "winner_test_accuracy": acc, "run_epochs": int(book["spent"]),
          "run_epochs_without_halving": int(full), "seconds": seconds}


def _f(x: float) -> float | None:
  return None if math.isnan(x) else float(x)


def write(workdir: str, summary: dict) -> None:
  """search.csv (one row per point) and search.json, atomically."""
  keys = summary["keys"]
  cols = ["point", *keys, "wave", "epochs", "pruned", "val_accuracy", "test_accuracy", "chosen"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
  w.writeheader()
  for row in summary["points"]:
    w.writerow({c: row[c] for c in cols})
  metrics_lib.write_atomic(os.path.join(workdir, "search.csv"), buf.getvalue())
  metrics_lib.write_atomic(os.path.join(workdir, "search.json"), json.dumps(summary, indent=1))


def table(summary: dict) -> str:
  """The points by validation accuracy, then the winner's test accuracy and the compute spent."""
  keys = summary["keys"]
  lines = [" ".join([f"{'point':>5}", *(f"{k:>22}" for k in keys), f"{'epochs':>6}",
                     f"{'val acc':>8}", f"{'test acc':>8}"])]
  rows = sorted(summary["points"], key=lambda r: (-(r["val_accuracy"] or -1), r["point"]))
  pct = lambda x: "—" if x is None else f"{100 * x:.2f}"
  for r in rows:
    lines.append(" ".join([f"{r['point']:>5}", *(f"{r[k]:>22.6g}" for k in keys),
                           f"{r['epochs']:>6}", f"{pct(r['val_accuracy']):>8}",
                           f"{pct(r['test_accuracy']):>8}"])
                 + ("  <- chosen" if r["chosen"] else ""))
  a = summary["winner_test_accuracy"]
  w = " ".join(f"{k}={v:.6g}" for k, v in summary["winner"].items())
  lines.append(f"chosen on validation accuracy: point {summary['chosen']} ({w}); its test "
               f"accuracy final {100 * a['final']['mean']:.2f} ± "
               f"{100 * a['final']['lab_pm']:.2f}, best-epoch {100 * a['best']['mean']:.2f} ± "
               f"{100 * a['best']['lab_pm']:.2f} (lab ±)")
  lines.append(f"run-epochs spent: {summary['run_epochs']} (every point to the end: "
               f"{summary['run_epochs_without_halving']})")
  return "\n".join(lines)
