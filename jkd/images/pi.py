"""Persistence images (PI) on device, equal to the lab's ripser + persim pipeline.

Per window and channel (`docs/persistence_images.md` states the lab's pipeline and every detail
below):

1. 0-dim sublevel-set persistence of the path graph of the series, as ripser computes it: values
   rounded to float32 first (ripser stores float32; kept even when computing in float64), vertex
   i born at v_i, edge (i, i+1) at max(v_i, v_{i+1}). A finite bar is born at a strict local
   minimum i (ties broken by position: the earlier of two equal values is the elder) and dies at
   the lower of the two barriers between i and the nearest elder vertex on each side:
   `death_i = min(max v(jL, i], max v[i, jR))`, jL = max{j < i : v_j <= v_i},
   jR = min{j > i : v_j < v_i}; the global minimum's bar is the essential one, dropped.
   Strict local minima are never adjacent, so each pair of positions (2m, 2m + 1) holds at most
   one: `persistence_bars` gives one slot per pair, M = ceil(L / 2) slots (zero length where there
   is no finite bar; the bound ceil(L / 2) - 1 on the finite bars is reached by a zigzag). The
   searches run at pair level as masked reductions, O(M^2) per channel with no gathers or sorts.
2. Bars with death - birth > max(threshold, 1e-3) are kept, the comparison made exactly as the
   lab makes it in float64 (in float32 mode through the exact error of the float32 difference).
3. The legacy `persim.PersImage` grid: birth column k is the interval [a_k, a_k + dx] with
   a_k = linspace(min(lo, 0), hi, S)[k] and dx = hi / S; persistence bin l is [c_l, c_l + dx],
   c_l = linspace(0, hi, S)[l] (the bins do not tile). Each bar adds p * X(b) Y(p), X and Y the
   Gaussian (std `spread`) masses of the bins, as differences of erf.
4. Orientation: row r is persistence bin S - 1 - r (row 0 is the largest persistence), column c
   is birth bin c. Each image is divided by its maximum; an empty diagram gives zeros.

`persistence_image` returns the images channels-last, `(B, S, S, C)`. Everything is `jnp` with
static shapes, so it jits and vmaps on any backend. In float32 it matches the lab within ~4e-6
(the float32 grid and coordinates), with `jax_enable_x64` and float64 input within ~1e-14.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# The lab's first diagram filter (death - birth > 1e-3) before the threshold.
_MIN_PERSISTENCE = 1e-3
# On a CPU, windows go through the image in groups of this many (lax.map): the per-bar masses
# and the images of a group stay in cache (python -m jkd.bench pi, docs/persistence_images.md).
_CPU_GROUP = 8


def num_slots(length: int) -> int:
  """Bar slots per channel for windows of `length` points: ceil(L / 2) (one per pair)."""
  return (length + 1) // 2


def vertex_values(x: Array) -> Array:
  """The series as ripser sees it: rounded to float32, in the computation dtype (float64 for
  float64 input under jax_enable_x64, else float32)."""
  dtype = jnp.result_type(x.dtype, jnp.float32)
  return jnp.asarray(x).astype(jnp.float32).astype(dtype)


def persistence_bars(x: Array) -> tuple[Array, Array]:
  """Finite 0-dim sublevel-set bars of every channel: `(B, L, C)` -> (birth, death), each
  `(B, M, C)` with M = ceil(L / 2), one slot per pair of positions (2m, 2m + 1).

  Slots without a finite bar (no strict local minimum in the pair, or the global minimum) have
  death == birth. As a multiset, the bars with death > birth are ripser's finite bars.
  """
  v = vertex_values(x)
  b, length, c = v.shape
  m = num_slots(length)
  inf = jnp.asarray(jnp.inf, v.dtype)
  vp = jnp.pad(v, ((0, 0), (0, 2 * m - length), (0, 0)), constant_values=jnp.inf)
  first, second = vp[:, 0::2], vp[:, 1::2]                # (B, M, C)
  # The pair's candidate: its elder vertex (the later one only if strictly lower).
  birth = jnp.minimum(first, second)
  top = jnp.maximum(first, second)
  idx = jnp.arange(m)
  me = idx[None, :, None, None]                           # the candidate's pair
  other = idx[None, None, :, None]                        # every other pair
  cand = birth[:, :, None, :]                             # (B, M, 1, C)
  low = birth[:, None, :, :]                              # (B, 1, M, C)
  # Nearest pair to the left holding a vertex <= the candidate, to the right one < it. The
  # candidate's own pair never does (its other vertex is higher, or equal and later).
  left = jnp.max(jnp.where((other < me) & (low <= cand), other, -1), axis=2)
  right = jnp.min(jnp.where((other > me) & (low < cand), other, m), axis=2)
  # Barriers: the highest vertex strictly between the candidate and that elder vertex. In the
  # elder's pair only its other vertex can lie between (second on the left, first on the right):
  # when it is the elder itself it is <= the candidate and changes nothing.
  lft, rgt = left[:, :, None, :], right[:, :, None, :]
  tops = top[:, None, :, :]
  barrier_l = jnp.max(jnp.where((other > lft) & (other < me), tops,
                                jnp.where(other == lft, second[:, None], -inf)), axis=2)
  barrier_r = jnp.max(jnp.where((other < rgt) & (other > me), tops,
                                jnp.where(other == rgt, first[:, None], -inf)), axis=2)
  # ... and the candidate's own pair (its other vertex, between the candidate and that side).
  barrier_l = jnp.where(left < 0, inf, jnp.maximum(barrier_l, first))
  barrier_r = jnp.where(right >= m, inf, jnp.maximum(barrier_r, second))
  death = jnp.minimum(barrier_l, barrier_r)
  return birth, jnp.where(jnp.isfinite(death), death, birth)


def grid(image_size: int, birth_range: Sequence[float]) -> tuple[np.ndarray, ...]:
  """float64 bin edges of the legacy persim grid: (birth lower, birth upper, persistence lower,
  persistence upper), each (S,)."""
  lo, hi = (float(v) for v in birth_range)
  lo = min(lo, 0.0)
  dx = hi / image_size
  births = np.linspace(lo, hi, image_size)
  pers = np.linspace(0.0, hi, image_size)
  return births, births + dx, pers, pers + dx


def persistence_image(x: Array, image_size: int = 64, *, spread: float | None = 0.015,
                      birth_range: Sequence[float] = (-1.0, 1.0), threshold: float = 0.01
                      ) -> Array:
  """Persistence image of every channel: windows `(B, L, C)` -> images `(B, S, S, C)`.

  Args:
    x: windows, channels-last (the lab: min-max scaled, before any z-scoring).
    image_size: S, pixels per side (persim's `pixels=[S, S]`).
    spread: std of the Gaussian on both axes; None or 0 uses the bin width, as persim does.
    birth_range: persim's `specs` (minBD, maxBD), maxBD > 0.
    threshold: keep bars with death - birth > threshold (and > 1e-3, the lab's first filter).

  Float32 input gives float32 images; float64 input under jax_enable_x64 float64 ones.
  """
  if x.ndim != 3:
    raise ValueError(f"pi: x must be (batch, length, channels), got shape {x.shape}")
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
      or image_size < 1:
    raise ValueError(f"pi: image_size must be an int >= 1, got {image_size!r}")
  if len(birth_range) != 2 or not float(birth_range[1]) > 0:
    raise ValueError(f"pi: birth_range must be (minBD, maxBD) with maxBD > 0, got {birth_range!r}")
  size = int(image_size)
  if not spread:
    spread = float(birth_range[1]) / size
  if not spread > 0:
    raise ValueError(f"pi: spread must be > 0, got {spread!r}")
  make = lambda w: _images(w, size, float(spread), tuple(map(float, birth_range)),
                           float(threshold))
  b = x.shape[0]
  group = math.gcd(b, _CPU_GROUP) if jax.default_backend() == "cpu" else b
  if group in (0, b):
    return make(x)
  out = jax.lax.map(make, x.reshape(b // group, group, *x.shape[1:]))
  return out.reshape(b, *out.shape[2:])


def _images(x: Array, size: int, spread: float, birth_range: tuple[float, float],
            threshold: float) -> Array:
  birth, death = persistence_bars(x)
  dtype = birth.dtype
  keep = _longer_than(birth, death, max(threshold, _MIN_PERSISTENCE))
  pers = jnp.where(keep, death - birth, 0)
  birth = jnp.where(keep, birth, 0)
  birth, pers = birth.transpose(0, 2, 1), pers.transpose(0, 2, 1)        # (B, C, M)
  b_lo, b_hi, p_lo, p_hi = (jnp.asarray(e, dtype) for e in grid(size, birth_range))
  cols = _masses(b_lo, b_hi, birth, spread)                               # (B, C, M, S)
  rows = _masses(p_lo[::-1], p_hi[::-1], pers, spread) * pers[..., None]  # row r: bin S-1-r
  img = jnp.einsum("bcmr,bcmk->bcrk", rows, cols, precision=jax.lax.Precision.HIGHEST)
  peak = jnp.max(img, axis=(2, 3), keepdims=True)
  img = jnp.where(peak > 0, img / jnp.where(peak > 0, peak, 1), 0)
  return img.transpose(0, 2, 3, 1)


def _masses(lower: Array, upper: Array, centre: Array, spread: float) -> Array:
  """Gaussian mass of each bin [lower, upper] (S,) around each centre (...,): (..., S)."""
  scale = 1.0 / (spread * math.sqrt(2.0))
  c = centre[..., None]
  return 0.5 * (jax.lax.erf((upper - c) * scale) - jax.lax.erf((lower - c) * scale))


def _longer_than(birth: Array, death: Array, t: float) -> Array:
  """death - birth > t as the lab evaluates it: a float64 subtraction of float32 values and a
  float64 comparison. In float32 the difference is held exactly as s + e (TwoSum) and compared
  with t's float32 split, exactly whenever the difference is exact in float64 (always for
  values in [0, 1] unless the birth is below ~1e-9 times the death)."""
  if birth.dtype == jnp.float64:
    return death - birth > t
  s = death - birth
  bb = s - death
  e = (death - (s - bb)) + (-birth - bb)            # exact: death - birth = s + e
  t_hi = np.float32(t)
  rest = t - float(t_hi)                            # exact in float64
  r_hi = np.float32(rest)
  r_lo = rest - float(r_hi)
  up = float(np.nextafter(t_hi, np.float32(np.inf)))
  if rest == (up - float(t_hi)) / 2:
    # t is the midpoint above t_hi: above t_hi, only s = up with the exact midpoint is not > t.
    above = (s > t_hi) & ~((s == up) & (e == np.float32(float(t_hi) + rest - up)))
  else:
    above = s > t_hi
  return above | ((s == t_hi) & ((e > r_hi) | ((e == r_hi) & (r_lo < 0))))
