"""What every data source returns before windowing and folds."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
  """A problem with the user's data or data config; the message names the thing and the fix."""


@dataclasses.dataclass
class Recording:
  """One continuous recording of one subject (windows never cross recordings)."""
  subject: int
  x: np.ndarray            # (T, C) float32
  y: np.ndarray            # (T,) int64 class index in [0, K); -1 = unlabelled
  session: int = 0


@dataclasses.dataclass
class Dataset:
  """A source's output: either continuous `recordings` or ready-made windows `x, y, subject`."""
  classes: list[str]
  channels: list[str]
  recordings: list[Recording] | None = None
  x: np.ndarray | None = None        # (N, L, C) float32, already windowed
  y: np.ndarray | None = None        # (N,) int64
  subject: np.ndarray | None = None  # (N,) int64
