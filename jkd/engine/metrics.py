"""Classification metrics from confusion matrices, and the JSON-lines metrics log.

`confusion[true, predicted]` counts. Macro-F1 follows scikit-learn's `f1_score(average='macro')`:
the mean of per-class `2 TP / (2 TP + FP + FN)` over the classes present in the labels or the
predictions (a class absent from both is skipped; one predicted but absent scores 0).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import numpy as np


def accuracy(confusion: np.ndarray) -> float:
  confusion = np.asarray(confusion, np.float64)
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total else 0.0


def macro_f1(confusion: np.ndarray) -> float:
  c = np.asarray(confusion, np.float64)
  tp = np.diag(c)
  support, predicted = c.sum(1), c.sum(0)
  present = (support + predicted) > 0
  if not present.any():
    return 0.0
  f1 = 2 * tp[present] / (support[present] + predicted[present])
  return float(f1.mean())


def summarize(confusion: np.ndarray) -> dict[str, float]:
  return {"accuracy": accuracy(confusion), "macro_f1": macro_f1(confusion)}


class JsonLines:
  """Append-only `metrics.jsonl`; `truncate(epoch)` drops records after a resumed epoch."""

  def __init__(self, path: str, enabled: bool = True):
    self.path, self.enabled = path, enabled

  def write(self, records: Iterable[dict[str, Any]]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      for r in records:
        f.write(json.dumps(r) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def read(self) -> list[dict[str, Any]]:
    if not os.path.exists(self.path):
      return []
    out = []
    with open(self.path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:   # a line cut by a kill
          break
    return out

  def truncate(self, last_epoch: int) -> None:
    """Keep the records of epochs <= last_epoch (a resume restarts after it)."""
    if not self.enabled:
      return
    kept = [r for r in self.read() if r.get("epoch", -1) <= last_epoch]
    write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def write_atomic(path: str, text: str) -> None:
  """Write via a temporary file and os.replace, so a reader never sees half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
