"""Time-series augmentations on device, per example, inside the jitted step.

Definitions follow Um et al., "Data augmentation of wearable sensor data for Parkinson's disease
monitoring using convolutional neural networks" (ICMI 2017), the set the lab studies for KD:

* jitter:          x + N(0, sigma)                                   (per element)
* scaling:         x * N(1, sigma)                                   (per example and channel)
* magnitude_warp:  x * c(t), c a smooth curve through `knots` values ~ N(1, sigma) (per channel)
* time_warp:       x resampled at warped times; the warp is the cumulative sum of a smooth curve
                   through `knots` values ~ N(1, sigma), rescaled to span [0, L-1]
* permutation:     the window cut into `permutation` segments at random points, reordered randomly
* rotation:        a uniformly random 3-D rotation applied to every 3-axis sensor group
                   (`sensor_groups`: first channel index of each xyz triple); one rotation per
                   example shared by all groups (a wrist turning turns every sensor on it)
* mixup:           lambda ~ Beta(a, a); x = lambda x + (1 - lambda) x[perm], labels mixed alike
* cutmix (time):   a time segment of length round((1 - lambda) L) copied from x[perm]; labels mixed
                   by the fraction of time actually replaced

A smooth curve is a cubic (Keys) interpolation of the knot values onto L points
(`jax.image.resize(..., 'cubic')`). Augmentations with strength 0 are skipped at trace time, so an
all-zero config costs nothing. Every function is pure in `(key, x)` and vmaps over runs.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array


def default_config() -> ml_collections.ConfigDict:
  """`config.augment`: every strength 0 (off); the values in comments are common choices."""
  return ml_collections.ConfigDict({
      "jitter": 0.0,            # sigma, e.g. 0.05
      "scaling": 0.0,           # sigma, e.g. 0.1
      "magnitude_warp": 0.0,    # sigma, e.g. 0.2
      "time_warp": 0.0,         # sigma, e.g. 0.2
      "knots": 4,
      "permutation": 0,         # number of segments, e.g. 4 (0 or 1 = off)
      "rotation": False,
      "sensor_groups": (),      # first channel of each xyz triple, e.g. (1, 4, 7, 10)
      "mixup": 0.0,             # Beta alpha, e.g. 0.2
      "cutmix": 0.0,            # Beta alpha, e.g. 1.0
  })


def smooth_curve(key: Array, shape_knots: tuple[int, int], length: int, sigma: float) -> Array:
  """(knots + 2, C) random knot values ~ N(1, sigma) interpolated to (length, C)."""
  k, c = shape_knots
  knots = 1.0 + sigma * jax.random.normal(key, (k + 2, c))
  return jax.image.resize(knots, (length, c), "cubic")


def jitter(key, x, sigma):
  return x + sigma * jax.random.normal(key, x.shape, x.dtype)


def scaling(key, x, sigma):
  return x * (1.0 + sigma * jax.random.normal(key, (1, x.shape[-1]), x.dtype))


def magnitude_warp(key, x, sigma, knots=4):
  return x * smooth_curve(key, (knots, x.shape[-1]), x.shape[0], sigma)


def time_warp(key, x, sigma, knots=4):
  length = x.shape[0]
  speed = jnp.maximum(smooth_curve(key, (knots, 1), length, sigma)[:, 0], 1e-3)
  t = jnp.cumsum(speed) - speed[0]
  t = t * (length - 1) / t[-1]
  grid = jnp.arange(length, dtype=x.dtype)
  return jax.vmap(lambda col: jnp.interp(t, grid, col), in_axes=1, out_axes=1)(x)


def permutation(key, x, segments):
  length = x.shape[0]
  k_cut, k_perm = jax.random.split(key)
  cuts = jnp.sort(jax.random.choice(k_cut, jnp.arange(1, length), (segments - 1,), replace=False))
  bounds = jnp.concatenate([jnp.zeros(1, cuts.dtype), cuts, jnp.full(1, length, cuts.dtype)])
  order = jax.random.permutation(k_perm, segments)
  lengths = (bounds[1:] - bounds[:-1])[order]
  starts_out = jnp.cumsum(lengths) - lengths
  t = jnp.arange(length)
  j = jnp.searchsorted(starts_out, t, side="right") - 1
  return x[bounds[order[j]] + t - starts_out[j]]


def random_rotation(key) -> Array:
  """A uniformly distributed 3x3 rotation (QR of a Gaussian matrix with sign fix, det +1)."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (3, 3)))
  q = q * jnp.sign(jnp.diag(r))[None, :]          # Haar-distributed on O(3)
  return q.at[:, 0].multiply(jnp.linalg.det(q))    # reflect one axis when det = -1: SO(3)


def rotate_groups(key, x, sensor_groups: Sequence[int]):
  rot = random_rotation(key).astype(x.dtype)
  for start in sensor_groups:
    x = x.at[:, start:start + 3].set(x[:, start:start + 3] @ rot.T)
  return x


def _per_example(fn, key, x, *args):
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(lambda k, xi: fn(k, xi, *args))(keys, x)


def mixup(key, x, y_soft, alpha):
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha, (x.shape[0],)).astype(x.dtype)
  perm = jax.random.permutation(k_perm, x.shape[0])
  x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[perm]
  y = lam[:, None] * y_soft + (1 - lam[:, None]) * y_soft[perm]
  return x, y


def cutmix(key, x, y_soft, alpha):
  b, length = x.shape[:2]
  k_lam, k_perm, k_pos = jax.random.split(key, 3)
  lam = jax.random.beta(k_lam, alpha, alpha, (b,))
  cut = jnp.round((1 - lam) * length).astype(jnp.int32)
  start = jax.random.randint(k_pos, (b,), 0, length - cut + 1)
  t = jnp.arange(length)
  inside = (t[None, :] >= start[:, None]) & (t[None, :] < (start + cut)[:, None])   # (B, L)
  perm = jax.random.permutation(k_perm, b)
  x = jnp.where(inside[..., None], x[perm], x)
  frac = (cut / length).astype(y_soft.dtype)[:, None]
  return x, (1 - frac) * y_soft + frac * y_soft[perm]


def augment(key: Array, x: Array, y_soft: Array, cfg) -> tuple[Array, Array]:
  """Apply the configured augmentations to a batch `x` (B, L, C) with soft labels `y_soft` (B, K)."""
  keys = iter(jax.random.split(key, 8))
  if cfg.jitter:
    x = jitter(next(keys), x, cfg.jitter)
  if cfg.scaling:
    x = _per_example(scaling, next(keys), x, cfg.scaling)
  if cfg.magnitude_warp:
    x = _per_example(magnitude_warp, next(keys), x, cfg.magnitude_warp, cfg.knots)
  if cfg.time_warp:
    x = _per_example(time_warp, next(keys), x, cfg.time_warp, cfg.knots)
  if cfg.permutation > 1:
    x = _per_example(permutation, next(keys), x, cfg.permutation)
  if cfg.rotation:
    if not cfg.sensor_groups:
      raise ValueError("config.augment.rotation needs config.augment.sensor_groups "
                       "(first channel index of each xyz triple)")
    if max(cfg.sensor_groups) + 3 > x.shape[-1]:
      raise ValueError(f"config.augment.sensor_groups {tuple(cfg.sensor_groups)} exceed the "
                       f"{x.shape[-1]} channels of the data")
    x = _per_example(rotate_groups, next(keys), x, tuple(cfg.sensor_groups))
  if cfg.mixup:
    x, y_soft = mixup(next(keys), x, y_soft, cfg.mixup)
  if cfg.cutmix:
    x, y_soft = cutmix(next(keys), x, y_soft, cfg.cutmix)
  return x, y_soft


def is_active(cfg) -> bool:
  """Whether any augmentation is on (teacher outputs can be cached only when none is)."""
  return bool(cfg.jitter or cfg.scaling or cfg.magnitude_warp or cfg.time_warp
              or cfg.permutation > 1 or cfg.rotation or cfg.mixup or cfg.cutmix)
