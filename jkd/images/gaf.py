"""Gramian Angular Fields (GASF / GADF) on device, matching `pyts.image.GramianAngularField`.

Per sample and channel of a channels-last window `(B, L, C)`:

1. PAA: reduce L points to S window means, with exactly the window boundaries of pyts'
   `pyts.utils.segmentation` (as a fixed `(L, S)` averaging matrix, so PAA is one matmul).
   When rescaling follows, each series is first shifted by its first value (min-max scaling
   ignores shifts; it keeps float32 means precise relative to the range, not to the offset).
2. Min-max rescale the S means to `sample_range = (lo, hi)`: `cos φ = lo + (hi - lo) t` with
   `t = (p - min) / (max - min)`.
3. `sin φ = sqrt(1 - cos² φ)`, evaluated as `sqrt((1 + cos φ)(1 - cos φ))` with both factors
   written as sums of non-negative terms, `(1 + lo) + (hi - lo) t` and
   `(1 - hi) + (hi - lo)(1 - t)`, where `1 - t = (max - p) / (max - min)`. In float32 the
   textbook form loses all precision near cos φ = ±1 (sin has infinite slope there); this form
   keeps sin to float32 relative precision, which lets float32 match pyts' float64 within 1e-5.
4. GASF `cos φ_i cos φ_j − sin φ_i sin φ_j`, GADF `sin φ_i cos φ_j − cos φ_i sin φ_j`, written as
   a broadcast outer product straight into the channels-last `(B, S, S, C)` output.

Constant channels: a channel whose S means span at most `_CONSTANT_RTOL` relative to their
magnitude (rounding noise; after the shift of step 1 an exactly constant channel has means 0)
maps to `cos φ = lo`, `sin φ = sqrt(1 − lo²)`, as pyts does (scikit-learn's MinMaxScaler sends a
zero range to the lower bound): with the default range GASF ≡ 1 and GADF ≡ 0. Never NaN.

`gaf_factors` returns the same images as their rank-2 factors (`GafFactors`: per sample and
channel two S-vectors for rows and two for columns); jkd's models take them as input and their
first convolution never builds the S x S images (`jkd.models.layers.conv_factors`).

Everything is `jnp`, so the function jits and vmaps; `image_size`, `method`, `sample_range` and
`overlapping` are Python values fixed at trace time. Call it on each batch inside the jitted
step rather than storing images: a PAMAP2 fold stored as images would be ~17 GB.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_METHODS = {"s": "summation", "summation": "summation",
            "d": "difference", "difference": "difference"}
# A channel whose PAA range is below this fraction of its magnitude is treated as constant.
_CONSTANT_RTOL = 16 * float(np.finfo(np.float32).eps)


def output_size(length: int, image_size: int | float) -> int:
  """S for a series of `length` points: an int as is, a float f in (0, 1] as `ceil(f * length)`."""
  if isinstance(image_size, bool) or not isinstance(image_size, Real):
    raise TypeError(f"gaf: image_size must be an int or a float fraction, got {image_size!r}")
  if isinstance(image_size, Integral):
    if not 1 <= image_size <= length:
      raise ValueError(f"gaf: image_size={image_size} must be in [1, L={length}]; "
                       f"pick S <= the window length")
    return int(image_size)
  if not 0 < image_size <= 1:
    raise ValueError(f"gaf: a float image_size is a fraction of L and must be in (0, 1], "
                     f"got {image_size}")
  return math.ceil(image_size * length)


def paa_bounds(length: int, size: int, overlapping: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Start/end (exclusive) of each of the `size` PAA windows, exactly as pyts' `segmentation`."""
  window, remainder = divmod(length, size)
  window += remainder != 0
  if window == 1:                                       # pyts' PAA returns the series itself
    return np.arange(length), np.arange(1, length + 1)
  if not overlapping:
    bounds = np.linspace(0, length, size + 1).astype(np.int64)
    return bounds[:-1], bounds[1:]
  overlaps = np.linspace(0, size * window - length, size).astype(np.int64)
  bounds = np.arange(0, (size + 1) * window, window)
  return bounds[:-1] - overlaps, bounds[1:] - overlaps


def paa_matrix(length: int, size: int, overlapping: bool = False) -> np.ndarray:
  """`(length, size)` float32 matrix `A` with `x @ A` = the PAA window means of `x`."""
  start, end = paa_bounds(length, size, overlapping)
  t = np.arange(length)[:, None]
  inside = (t >= start[None, :]) & (t < end[None, :])
  return (inside / (end - start)[None, :]).astype(np.float32)


def gramian_angular_field(x: Array, image_size: int | float, *, method: str = "summation",
                          sample_range: tuple[float, float] | None = (-1.0, 1.0),
                          overlapping: bool = False) -> Array:
  """Gramian Angular Field of every channel: `(B, L, C)` -> `(B, S, S, C)` float32.

  Args:
    x: windows, channels-last.
    image_size: S, an int in [1, L], or a float fraction f in (0, 1] giving S = ceil(f L).
    method: 'summation' / 's' (GASF) or 'difference' / 'd' (GADF).
    sample_range: (lo, hi) with -1 <= lo < hi <= 1 to min-max rescale each sample and channel
      to; None uses the PAA values as cos φ unscaled, which must then lie in [-1, 1] (not checked
      on device; values outside act as ±1 for sin φ).
    overlapping: pyts' `overlapping` PAA windows (default False, as pyts).
  """
  return gaf_factors(x, image_size, method=method, sample_range=sample_range,
                     overlapping=overlapping).dense()


def image_batches(image_size: int | float, *, method: str = "summation",
                  sample_range: tuple[float, float] | None = (-1.0, 1.0),
                  overlapping: bool = False) -> Callable[[Array, Array], Array]:
  """A jitted `images(x, previous) -> (B, S, S, C)` for image batches made one after another
  (e.g. to export them): `gramian_angular_field(x, ...)` written into the memory of `previous`,
  the last batch's images (same shape), which is donated and must not be used again.

  A fresh 84 MB output per PAMAP2 batch costs more in page faults than the field itself on a CPU
  (`python -m jkd.bench gaf`): reusing the buffer brings the field to the memory-copy floor.
  """
  fn = lambda x, previous: gramian_angular_field(x, image_size, method=method,
                                                 sample_range=sample_range,
                                                 overlapping=overlapping)
  return jax.jit(fn, donate_argnums=1, keep_unused=True)   # keep_unused: keep the donation


def gaf_factors(x: Array, image_size: int | float, *, method: str = "summation",
                sample_range: tuple[float, float] | None = (-1.0, 1.0),
                overlapping: bool = False) -> "GafFactors":
  """`gramian_angular_field`'s images as their rank-2 factors (arguments as there): S x C numbers
  per image instead of S x S x C. `.dense()` gives the same images; `jkd.models.layers.Conv`
  convolves the factors directly."""
  if x.ndim != 3:
    raise ValueError(f"gaf: x must be (batch, length, channels), got shape {x.shape}")
  if method not in _METHODS:
    raise ValueError(f"gaf: method must be one of {sorted(_METHODS)}, got {method!r}")
  length = x.shape[1]
  size = output_size(length, image_size)
  bounds = None if sample_range is None else _check_range(sample_range)
  x = jnp.asarray(x, jnp.float32)
  if bounds is not None:
    # Min-max scaling ignores shifts: removing the first value keeps the float32 PAA precise
    # relative to the range instead of to the offset (an accelerometer's gravity, say).
    x = x - x[:, :1, :]
  if size == length:
    p = x
  else:
    a = jnp.asarray(paa_matrix(length, size, overlapping))
    p = jnp.einsum("blc,ls->bsc", x, a, precision=jax.lax.Precision.HIGHEST)
  return _factors_of_paa(p, bounds, method)


def _factors_of_paa(p: Array, bounds: tuple[float, float] | None, method: str
                       ) -> "GafFactors":
  cos, sin = _angles(p, bounds)
  if _METHODS[method] == "summation":       # cos φi cos φj − sin φi sin φj
    return GafFactors(jnp.stack([cos, sin], 2), jnp.stack([cos, -sin], 2))
  return GafFactors(jnp.stack([sin, cos], 2), jnp.stack([cos, -sin], 2))   # sin φi cos φj − ...


@jax.tree_util.register_pytree_node_class
class GafFactors:
  """A batch of GAF images held as rank-2 factors: image[n, i, j, c] = Σ_r rows[n, i, r, c] *
  cols[n, j, r, c], with `rows`, `cols` of shape (B, S, 2, C). Looks like its `(B, S, S, C)`
  images to shape checks (`shape`, `ndim`, `dtype`)."""

  def __init__(self, rows: Array, cols: Array):
    self.rows, self.cols = rows, cols

  @property
  def shape(self) -> tuple[int, ...]:
    b, s, _, c = self.rows.shape
    return (b, s, self.cols.shape[1], c)

  ndim = 4

  @property
  def dtype(self):
    return self.rows.dtype

  def astype(self, dtype) -> "GafFactors":
    return GafFactors(self.rows.astype(dtype), self.cols.astype(dtype))

  def dense(self) -> Array:
    """The `(B, S, S, C)` images (what `gramian_angular_field` returns)."""
    r, c = self.rows[:, :, None], self.cols[:, None]          # (B, S, 1, 2, C), (B, 1, S, 2, C)
    return r[..., 0, :] * c[..., 0, :] + r[..., 1, :] * c[..., 1, :]

  def tree_flatten(self):
    return (self.rows, self.cols), None

  @classmethod
  def tree_unflatten(cls, _, children):
    return cls(*children)


def as_dense(x: "Array | GafFactors") -> Array:
  """Images from factors; arrays unchanged (for models whose first layer is not a convolution)."""
  return x.dense() if isinstance(x, GafFactors) else x


def _angles(p: Array, bounds: tuple[float, float] | None) -> tuple[Array, Array]:
  """cos φ and sin φ of PAA values `p` (B, S, C), rescaled per sample and channel along S."""
  if bounds is None:
    return p, jnp.sqrt(jnp.clip((1 - p) * (1 + p), 0.0, 1.0))
  lo, hi = bounds
  pmin = jnp.min(p, axis=1, keepdims=True)
  pmax = jnp.max(p, axis=1, keepdims=True)
  span = pmax - pmin
  constant = span <= _CONSTANT_RTOL * jnp.maximum(jnp.abs(pmin), jnp.abs(pmax))
  span = jnp.where(constant, 1.0, span)
  t = jnp.where(constant, 0.0, (p - pmin) / span)          # position in [0, 1]
  u = jnp.where(constant, 1.0, (pmax - p) / span)          # 1 - t, without cancellation
  width = hi - lo
  cos = lo + width * t
  sin = jnp.sqrt(((1 + lo) + width * t) * ((1 - hi) + width * u))
  return cos, sin


def _check_range(sample_range) -> tuple[float, float]:
  if not isinstance(sample_range, (tuple, list)) or len(sample_range) != 2:
    raise ValueError(f"gaf: sample_range must be None or a pair (lo, hi), got {sample_range!r}")
  lo, hi = (float(v) for v in sample_range)
  if not -1 <= lo < hi <= 1:
    raise ValueError(f"gaf: sample_range must satisfy -1 <= lo < hi <= 1, got {sample_range!r}")
  return lo, hi
