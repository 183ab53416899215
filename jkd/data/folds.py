"""Cross-validation folds by subject, their normalisation statistics, and batches drawn from them.

Which subjects each fold tests on (``config.data``):

* default, ``num_folds = 0``: leave-one-subject-out (LOSO), one fold per subject in subject order;
* ``test_subjects = (a, b, ...)``: LOSO restricted to those subjects (one fold each);
* ``num_folds = K``: the subjects, shuffled by ``fold_seed``, split into K groups of near-equal size
  (``np.array_split``); fold f tests on group f.

Validation (the subjects of neither the test nor the training set of a fold):

* ``val_subjects = (a, ...)``: these subjects validate every fold and never train or test;
* ``num_val_subjects = m``: fold f holds out m of its own training subjects, drawn without
  replacement by ``numpy.random.default_rng([fold_seed, f])``;
* neither: no validation (``val`` has shape (F, 0)).

Index arrays are (F, n_max) int32 into x, padded with 0 (a valid index) beyond each fold's count,
so all folds stack into one array that `jax.vmap` maps over. Statistics come from per-subject
partial sums (`normalize.moments`), so all folds together read x once and never copy it.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jkd.data import normalize
from jkd.data.base import DataError


@dataclasses.dataclass
class Folds:
  """Every fold's index sets into x and its normalisation statistics, stacked over folds."""
  train: np.ndarray        # (F, n_max) int32 indices into x, padded with 0
  train_count: np.ndarray  # (F,) int32 real entries per row
  test: np.ndarray
  test_count: np.ndarray
  val: np.ndarray          # (F, 0) when no validation
  val_count: np.ndarray
  mean: np.ndarray         # (F, C) float32, fitted on the training subjects
  std: np.ndarray          # (F, C) float32 (zero std replaced by 1, with a warning)
  test_subjects: list[tuple[int, ...]]
  val_subjects: list[tuple[int, ...]]
  num_classes: int

  @property
  def num_folds(self) -> int:
    return len(self.test_subjects)


def _subject_list(values, known: np.ndarray, key: str) -> tuple[int, ...]:
  values = tuple(int(v) for v in values)
  unknown = sorted(set(values) - set(known.tolist()))
  if unknown:
    raise DataError(f"config.data.{key} names subjects {unknown} that have no windows; the data "
                    f"hold subjects {known.tolist()}.")
  if len(set(values)) != len(values):
    raise DataError(f"config.data.{key}={values} repeats a subject; list each subject once.")
  return values


def held_out(subjects: np.ndarray, cfg: ml_collections.ConfigDict
             ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
  """(test subjects, validation subjects) of every fold, from the config rules above."""
  test = _subject_list(cfg.test_subjects, subjects, "test_subjects")
  fixed_val = _subject_list(cfg.val_subjects, subjects, "val_subjects")
  num_folds, num_val = int(cfg.num_folds), int(cfg.num_val_subjects)
  if test and num_folds:
    raise DataError(f"config.data.test_subjects={test} and num_folds={num_folds} both choose the "
                    "test subjects; set one (num_folds=0 with test_subjects, or test_subjects=()).")
  if fixed_val and num_val:
    raise DataError(f"config.data.val_subjects={fixed_val} and num_val_subjects={num_val} both "
                    "choose validation subjects; set one of them.")
  if set(test) & set(fixed_val):
    raise DataError(f"subjects {sorted(set(test) & set(fixed_val))} are in both "
                    "config.data.test_subjects and val_subjects; a subject can only be one.")
  pool = np.array([s for s in subjects.tolist() if s not in fixed_val], np.int64)
  if test:
    groups = [(s,) for s in test]
  elif num_folds == 0:
    groups = [(int(s),) for s in pool]
  else:
    if not 2 <= num_folds <= len(pool):
      raise DataError(f"config.data.num_folds={num_folds} needs 2..{len(pool)} (the number of "
                      "subjects available for testing); use 0 for leave-one-subject-out.")
    shuffled = np.random.default_rng(int(cfg.fold_seed)).permutation(pool)
    groups = [tuple(sorted(int(s) for s in g)) for g in np.array_split(shuffled, num_folds)]
  vals = []
  for f, group in enumerate(groups):
    if not num_val:
      vals.append(fixed_val)
      continue
    train = [s for s in pool.tolist() if s not in group]
    if num_val >= len(train):
      raise DataError(f"config.data.num_val_subjects={num_val} leaves fold {f} (test subjects "
                      f"{group}) no training subject: it has {len(train)}; lower it.")
    picked = np.random.default_rng([int(cfg.fold_seed), f]).choice(train, num_val, replace=False)
    vals.append(tuple(sorted(int(s) for s in picked)))
  return groups, vals


def train_counts(subject: np.ndarray, cfg: ml_collections.ConfigDict) -> np.ndarray:
  """Training windows of every fold `make_folds` would make, from the subjects alone (a cheap
  check of the fold rules: the same DataErrors)."""
  subjects, counts = np.unique(np.asarray(subject), return_counts=True)
  groups, vals = held_out(subjects, cfg)
  per = dict(zip(subjects.tolist(), counts.tolist()))
  out = []
  for f, (group, val) in enumerate(zip(groups, vals)):
    n = sum(c for s, c in per.items() if s not in group and s not in val)
    if n == 0:
      raise DataError(f"fold {f} (test subjects {group}) has an empty train set; use fewer "
                      "folds or validation subjects, or more subjects.")
    out.append(n)
  return np.array(out, np.int64)


def _stack(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Pad index rows with 0 into one (F, n_max) int32 array, plus the (F,) counts."""
  counts = np.array([len(r) for r in rows], np.int32)
  out = np.zeros((len(rows), int(counts.max(initial=0))), np.int32)
  for f, r in enumerate(rows):
    out[f, :len(r)] = r
  return out, counts


def make_folds(x: np.ndarray, y: np.ndarray, subject: np.ndarray,
               data_cfg: ml_collections.ConfigDict, num_classes: int | None = None) -> Folds:
  """Folds over the windows (x (N, L, C), y (N,), subject (N,)) as `data_cfg` describes.

  `num_classes` defaults to max(y) + 1. Raises DataError for unknown subjects and empty folds;
  warns when a class has no training window in a fold.
  """
  if len(x) >= 2 ** 31:
    raise DataError(f"{len(x)} windows exceed int32 indices; use fewer windows.")
  if not (len(x) == len(y) == len(subject)):
    raise DataError(f"x, y and subject disagree in length: {len(x)}, {len(y)}, {len(subject)}.")
  rule = str(data_cfg.normalize)
  if rule not in normalize.NORMALIZE_RULES:
    raise DataError(f"config.data.normalize={rule!r} is unknown; choose one of "
                    f"{normalize.NORMALIZE_RULES}.")
  num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
  if len(y) and (y.min() < 0 or y.max() >= num_classes):
    raise DataError(f"window labels span {int(y.min())}..{int(y.max())}, outside "
                    f"0..{num_classes - 1}; drop unlabelled windows and map labels to class "
                    "indices before making folds.")
  order = np.argsort(subject, kind="stable")
  subjects, first = np.unique(subject[order], return_index=True)
  members = dict(zip(subjects.tolist(), np.split(order, first[1:])))
  groups, vals = held_out(subjects, data_cfg)
  stats = {}
  rows = {"train": [], "test": [], "val": []}
  means, stds = [], []
  for f, (group, val) in enumerate(zip(groups, vals)):
    train = [s for s in subjects.tolist() if s not in group and s not in val]
    for name, subj in (("train", train), ("test", group), ("val", val)):
      idx = np.sort(np.concatenate([members[s] for s in subj])) if subj else np.zeros(0, np.int64)
      if name != "val" and len(idx) == 0:
        raise DataError(f"fold {f} (test subjects {group}) has an empty {name} set; use fewer "
                        "folds or validation subjects, or more subjects.")
      rows[name].append(idx)
    present = np.bincount(y[rows["train"][-1]], minlength=num_classes)
    for k in np.flatnonzero(present == 0):
      warnings.warn(f"fold {f} (test subjects {group}): class {int(k)} has no training window.",
                    stacklevel=2)
    if rule == "none":
      mean, std = np.zeros(x.shape[2], np.float32), np.ones(x.shape[2], np.float32)
    else:
      for s in train:
        if s not in stats:
          stats[s] = normalize.moments(x, members[s])
      mean, std = normalize.combine([stats[s] for s in train], rule)
      flat = np.flatnonzero(~(std > 0))
      if len(flat):
        warnings.warn(f"fold {f} (test subjects {group}): channels {flat.tolist()} are constant "
                      "over the training windows; their std is set to 1.", stacklevel=2)
        std = np.where(std > 0, std, np.float32(1.0))
    means.append(mean)
    stds.append(std)
  train, train_count = _stack(rows["train"])
  test, test_count = _stack(rows["test"])
  val, val_count = _stack(rows["val"])
  return Folds(train, train_count, test, test_count, val, val_count,
               np.stack(means).astype(np.float32), np.stack(stds).astype(np.float32),
               list(groups), list(vals), num_classes)


def batch_indices(key: jax.Array, idx: jax.Array, count: jax.Array, batch_size: int,
                  num_batches: int) -> tuple[jax.Array, jax.Array]:
  """One epoch of training batches: (indices (num_batches, batch_size) int32, step mask
  (num_batches,) bool).

  The `count` real entries of `idx` (one fold's padded row) are shuffled by `key` (padding sorts
  last and is never drawn) and cut into full batches (drop_last). Batches past
  ``count // batch_size`` are masked out; their indices are still valid entries of `idx`.
  Pure JAX: `jax.vmap` over runs (keys, rows, counts) works.
  """
  n = idx.shape[0]
  real = jnp.arange(n) < count
  order = jnp.argsort(jnp.where(real, jax.random.uniform(key, (n,)), 2.0), stable=True)
  pos = jnp.arange(num_batches * batch_size) % n
  indices = idx[order[pos]].reshape(num_batches, batch_size).astype(jnp.int32)
  return indices, jnp.arange(num_batches) < count // batch_size


def eval_batches(idx: jax.Array, count: jax.Array, batch_size: int
                 ) -> tuple[jax.Array, jax.Array]:
  """Every real entry of `idx` once, in order: (indices (B, batch_size), mask (B, batch_size)).

  B = ceil(len(idx) / batch_size) is static; entries at positions >= `count` are masked out.
  """
  n = idx.shape[0]
  num = -(-n // batch_size)
  pos = jnp.arange(num * batch_size)
  indices = jnp.asarray(idx)[jnp.minimum(pos, max(n - 1, 0))] if n else jnp.zeros(0, jnp.int32)
  return (indices.reshape(num, batch_size).astype(jnp.int32),
          (pos < count).reshape(num, batch_size))
