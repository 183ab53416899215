"""Per-fold, per-channel normalisation statistics from per-subject partial sums.

Rules (``config.data.normalize``), fitted on a fold's training subjects only:

* ``lab`` (the lab's PAMAP2 pipeline, docs/protocol.md §6.2): mean = per-channel mean over all
  windows and time steps; std = mean over windows of the per-window per-channel std (ddof 0);
* ``zscore``: per-channel mean and std (ddof 0) over all training samples;
* ``none``: mean 0, std 1.

Every subject's statistics are computed once, in small float64 chunks (never a copy of x), and a
fold combines its training subjects' statistics exactly (Chan et al.'s pairwise update), so all
folds together cost one pass over x. The data themselves are normalised where they are consumed,
with `apply`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NORMALIZE_RULES = ("lab", "zscore", "none")
_CHUNK_ELEMENTS = 1 << 18  # float64 elements per chunk: temporaries stay at a few MiB


@dataclasses.dataclass
class Moments:
  """One subject's partial statistics (float64), enough to combine into any fold's statistics."""
  windows: int
  samples: int
  mean: np.ndarray            # (C,) per-channel mean over the subject's samples
  m2: np.ndarray              # (C,) sum of squared deviations from `mean`
  window_std_sum: np.ndarray  # (C,) sum over the subject's windows of the per-window std


def _merge(n_a: int, mean_a: np.ndarray, m2_a: np.ndarray, n_b: int, mean_b: np.ndarray,
           m2_b: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
  """Chan et al.: count, mean and M2 of the union of two sample sets."""
  n = n_a + n_b
  delta = mean_b - mean_a
  return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta ** 2 * (n_a * n_b / n)


def moments(x: np.ndarray, indices: np.ndarray) -> Moments:
  """Statistics of the windows `x[indices]` (x: (N, L, C)), read in chunks of a few MiB."""
  _, length, channels = x.shape
  chunk = max(1, _CHUNK_ELEMENTS // (length * channels))
  n, mean, m2 = 0, np.zeros(channels), np.zeros(channels)
  std_sum = np.zeros(channels)
  contiguous = len(indices) > 0 and indices[-1] - indices[0] + 1 == len(indices)
  for a in range(0, len(indices), chunk):
    part = (x[indices[a]:indices[a] + len(indices[a:a + chunk])] if contiguous
            else x[indices[a:a + chunk]])
    part = part.astype(np.float64).reshape(-1, length, channels)
    flat = part.reshape(-1, channels)
    part_mean = flat.mean(axis=0)
    n, mean, m2 = _merge(n, mean, m2, flat.shape[0], part_mean,
                         np.square(flat - part_mean).sum(axis=0))
    std_sum += part.std(axis=1).sum(axis=0)
  return Moments(len(indices), n, mean, m2, std_sum)


def combine(parts: list[Moments], rule: str) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std), float32 (C,), by rule 'lab' or 'zscore', of the union of `parts` (rule 'none' is
  the identity, mean 0 and std 1, and needs no statistics)."""
  if rule not in ("lab", "zscore"):
    raise ValueError(f"statistics rule {rule!r} is unknown; choose 'lab' or 'zscore'")
  channels = len(parts[0].mean)
  n, mean, m2 = 0, np.zeros(channels), np.zeros(channels)
  for p in parts:
    n, mean, m2 = _merge(n, mean, m2, p.samples, p.mean, p.m2)
  if rule == "zscore":
    std = np.sqrt(m2 / n)
  else:
    std = sum(p.window_std_sum for p in parts) / sum(p.windows for p in parts)
  return mean.astype(np.float32), std.astype(np.float32)


def apply(x, mean, std):
  """Normalised windows `(x - mean) / std`; numpy or JAX arrays, mean/std broadcast over channels."""
  return (x - mean) / std
