"""TensorBoard event files of a workdir (`--config.train.tensorboard=True`), via tensorboardX.

    W/tensorboard/fold0_seed1234/events.out.tfevents...          one run (fold, seed[, sweep point])
    W/tensorboard/fold0_seed1234_beta=200/...                    ... of a sweep
    W/tensorboard/mean_beta=200/...                              mean over the folds and seeds
                                                                 of a sweep point ('mean' alone
                                                                 without a sweep)

One TensorBoard *run* per jkd run, so `tensorboard --logdir W` overlays the folds, seeds and sweep
points on the same charts and its run filter selects them by name (`fold3`, `beta=200`, `mean`);
in a pipeline each stage writes under its own workdir, so the runs read `student_kd/fold0_...`.
Tags are the same in every run: `train/<term>` (the epoch's mean loss terms), `lr`,
`test/{accuracy,macro_f1,loss}` and `val/...` when a validation split is configured; the step is
the epoch (1-based) and values are fractions, as in metrics.jsonl.

A run's file is appended to once per epoch and closed (hundreds of runs need no open files or
threads). A resumed run first rewrites its events, keeping the epochs up to the checkpoint (and
their wall times), so no epoch appears twice, whatever reads the files; the new file also starts
with a SessionLog START at step 1, which makes a TensorBoard that was watching during the kill
drop what it had loaded. Only process 0 writes. tensorboardX (no TensorFlow) is an optional
dependency: `pip install 'jkd[tensorboard]'`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import struct
import time
from typing import Any, Iterable

from jkd import config as config_lib

DIRNAME = "tensorboard"
_PREFIX = "events.out.tfevents."


def available() -> bool:
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    return False
  return True


def enabled(config) -> bool:
  return bool(config.train.get("tensorboard", False))


def check(config) -> None:
  """ConfigError (one line) when TensorBoard is asked for and tensorboardX is missing."""
  if enabled(config) and not available():
    raise config_lib.ConfigError("train.tensorboard=True needs tensorboardX: "
                                 "pip install 'jkd[tensorboard]' (or pip install tensorboardX)")


def _short(keys: list[str]) -> dict[str, str]:
  """Swept keys by their last component where that is unambiguous ('loss.beta' -> 'beta')."""
  last = [k.rsplit(".", 1)[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def point_name(sweep: dict[str, float]) -> str:
  short = _short(list(sweep))
  return "_".join(f"{short[k]}={v:g}" for k, v in sweep.items())


def run_name(fold: int, seed: int, sweep: dict[str, float]) -> str:
  """`fold0_seed1234`, `fold0_seed1234_beta=200`, `fold0_seed1234_alpha=0.3_beta=200`."""
  point = point_name(sweep)
  return f"fold{fold}_seed{seed}" + (f"_{point}" if point else "")


def mean_name(sweep: dict[str, float]) -> str:
  point = point_name(sweep)
  return "mean" + (f"_{point}" if point else "")


def scalars(record: dict) -> dict[str, float]:
  """The tags and values of one metrics.jsonl record (a failed run's zeroed train terms left out)."""
  out = {}
  if not record.get("failed"):
    out |= {f"train/{k}": v for k, v in record["train"].items() if k != "steps"}
  out["lr"] = record["lr"]
  for split in ("test", "val"):
    out |= {f"{split}/{k}": v for k, v in record.get(split, {}).items()}
  return out


# --- TFRecord framing of event files (CRC-32C masked as TensorFlow's record format) -----------

def _masked_crc(data: bytes) -> int:
  from tensorboardX.crc32c import crc32c
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data
          + struct.pack("<I", _masked_crc(data)))


def _records(path: str) -> Iterable[bytes]:
  """The records of one event file; a record cut by a kill (its length or header CRC does not
  fit), and anything after it, is dropped."""
  with open(path, "rb") as f:
    buf = f.read()
  pos = 0
  while pos + 12 <= len(buf):
    header = buf[pos:pos + 8]
    (n,) = struct.unpack("<Q", header)
    end = pos + 12 + n + 4
    if end > len(buf) or struct.unpack("<I", buf[pos + 8:pos + 12])[0] != _masked_crc(header):
      return
    yield buf[pos + 12:pos + 12 + n]   # (the data's own CRC, pure Python here, is not checked)
    pos = end


def _event_files(run_dir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(run_dir, _PREFIX + "*")))


def read_events(run_dir: str) -> list[Any]:
  """The scalar events (`tensorboardX.proto.event_pb2.Event`) of a run directory, in file order,
  with SessionLog START purges applied as TensorBoard does (events at or after its step dropped)."""
  from tensorboardX.proto import event_pb2
  events = []
  for path in _event_files(run_dir):
    for data in _records(path):
      e = event_pb2.Event.FromString(data)
      if e.HasField("session_log") and e.session_log.status == e.session_log.START:
        events = [k for k in events if k.step < e.step]
      elif e.HasField("summary"):
        events.append(e)
  return events


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(epoch, value), ...]} of a run directory (what TensorBoard would plot)."""
  out: dict[str, list[tuple[int, float]]] = {}
  for e in read_events(run_dir):
    for v in e.summary.value:
      out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


class Board:
  """The event files of one training: `write(records)` once per epoch (records as metrics.jsonl's),
  `start` = the epoch the training resumes after (0: fresh, the directory is cleared)."""

  def __init__(self, workdir: str, start: int):
    from tensorboardX.proto import event_pb2, summary_pb2
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self.root = os.path.join(workdir, DIRNAME)
    self.start = start
    self.files: dict[str, str] = {}
    if start == 0 and os.path.isdir(self.root):
      shutil.rmtree(self.root)
    os.makedirs(self.root, exist_ok=True)

  def _file(self, name: str) -> str:
    """This session's event file of run `name`: opened on first use, with the epochs up to
    `start` carried over from the previous sessions' files (which are then removed)."""
    if name in self.files:
      return self.files[name]
    run_dir = os.path.join(self.root, name)
    os.makedirs(run_dir, exist_ok=True)
    old = _event_files(run_dir)
    kept = [e for e in read_events(run_dir) if e.step <= self.start] if old else []
    head = [self._event(wall_time=time.time(), file_version="brain.Event:2")]
    if old:
      log = self._event(wall_time=time.time(), step=1)
      log.session_log.status = log.session_log.START
      head.append(log)
    path = os.path.join(run_dir, f"{_PREFIX}{int(time.time()):010d}.{socket.gethostname()}."
                                 f"{os.getpid()}.{len(old)}.jkd")
    tmp = os.path.join(run_dir, f"tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
      f.write(b"".join(_frame(e.SerializeToString()) for e in head + kept))
    os.replace(tmp, path)
    for p in old:
      if p != path:
        os.remove(p)
    self.files[name] = path
    return path

  def _append(self, name: str, epoch: int, values: dict[str, float], wall_time: float) -> None:
    summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v))
                                   for k, v in values.items()])
    event = self._event(wall_time=wall_time, step=epoch, summary=summary)
    with open(self._file(name), "ab") as f:
      f.write(_frame(event.SerializeToString()))

  def write(self, records: list[dict]) -> None:
    """One epoch's records (`jkd.engine.loop`'s metrics.jsonl records: epoch, run, fold, seed,
    sweep, lr, failed, train, test[, val]) -> one event per run, and the mean per sweep point
    over its runs that have not failed."""
    now = time.time()
    points: dict[str, list[dict[str, float]]] = {}
    for r in records:
      values = scalars(r)
      self._append(run_name(r["fold"], r["seed"], r["sweep"]), r["epoch"], values, now)
      group = points.setdefault(mean_name(r["sweep"]), [])
      if not r.get("failed"):
        group.append(values)
    epoch = records[0]["epoch"] if records else 0
    for name, group in points.items():
      if group:
        tags = [t for t in group[0] if all(t in g for g in group)]
        self._append(name, epoch, {t: sum(g[t] for g in group) / len(group) for t in tags}, now)
