"""Tiny synthetic datasets shared by the end-to-end tests (subprocess runs of jkd.main)."""

import numpy as np


def write_sine_windows(path, sizes):
  """An npz for the `windows` source: 3 classes of noisy sines (16 steps x 3 channels);
  `sizes[i]` windows per class for subject i + 1."""
  rng = np.random.default_rng(0)
  xs, ys, ss = [], [], []
  for subj, n in enumerate(sizes, start=1):
    for c in range(3):
      t = np.arange(16)[None, :, None]
      x = np.sin(2 * np.pi * (c + 1) * t / 16 + rng.uniform(0, 6.3, (n, 1, 3)))
      xs.append((x + 0.5 * rng.normal(size=(n, 16, 3))).astype(np.float32))
      ys.append(np.full(n, c))
      ss.append(np.full(n, subj))
  np.savez(path, x=np.concatenate(xs), y=np.concatenate(ys), subject=np.concatenate(ss))
