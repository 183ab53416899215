"""Speed of `jkd.images.pi.persistence_image` against the lab's ripser + persim path, and the first conv.

    python -m jkd.bench pi --batch=128 --length=100 --channels=40 --size=64 --repeats=5 \
        [--lab_windows=4] [--no-lab] [--no-stem]

The windows are PAMAP2-like: min-max scaled random walks with noise, clipped to [0, 0.99] as the
lab's preprocessing does (`bars_per_channel`: their mean number of bars above the threshold, which
the lab's cost grows with). Times are medians over `repeats` after a warm-up call, side by side in
one process:

  jkd: the jitted images `(B, L, C) -> (B, S, S, C)` float32, until `block_until_ready`
    (`jkd_ungrouped`: the whole batch at once instead of in groups of `jkd.images.pi._CPU_GROUP`
    windows on a CPU);
  lab: the notebook's loop (scipy sparse matrix, `ripser(..., maxdim=0, distance_matrix=True)`,
    its filters, legacy `persim.PersImage(...).transform`, division by the max) on the first
    `lab_windows` windows, scaled per image; `lab_over_jkd` = jkd's images per second over the
    lab's, and `max_abs_err` compares the two on those windows (needs ripser and persim, the
    test extra).
  stem: the first convolution of jkd's 2-D WRNs (`Conv(16, 3, padding=1)`, impl 'auto') as a
    train step needs it, forward (`fwd`) and forward + kernel gradient (`step`):
    `dense_*` builds the images in the same jit and convolves them (what `jkd.images` does);
    `factors_*` convolves the images given as rank-M factors (M = ceil(L / 2) bar slots per
    channel, `jkd.models.layers.conv_factors`, as GAF factors are), the factors made outside the
    timed call, so a lower bound of that route (it would still need the dense max to normalise);
    `conv_only_*` convolves ready images.
Prints one JSON line.

Measured on the 2-core CPU, shared with other jobs (docs/persistence_images.md, §6-7): jkd 267-319
ms per batch (16-19k images/s), the lab 305-316 ms per window (~130 images/s), `lab_over_jkd`
126-146 (74 once, with the machine oversubscribed: jkd uses two cores, the lab one); stem step: dense 808-1424 ms, factors 9477-11240 ms (8-12x), conv alone 775-859 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jkd.images import gaf, pi
from jkd.bench import median_ms
from jkd.models.layers import Conv

LAB_ARGS = {"spread": 0.015, "birth_range": (-1.0, 1.0), "threshold": 0.01}


def windows(batch: int, length: int, channels: int, seed: int = 0) -> np.ndarray:
  """PAMAP2-like float32 windows in [0, 0.99]."""
  rng = np.random.default_rng(seed)
  walk = np.cumsum(rng.normal(size=(batch, length, channels)), 1)
  walk += rng.normal(0, 0.3, walk.shape)
  walk = (walk - walk.min(1, keepdims=True)) / np.ptp(walk, 1, keepdims=True) * 1.1 - 0.05
  return np.where(walk > 1, 0.99, np.clip(walk, 0, None)).astype(np.float32)


def lab_images(x: np.ndarray, size: int) -> np.ndarray:
  """The lab notebook's loop: (n, L, C) -> (n, C, S, S) float64."""
  from ripser import ripser
  from scipy import sparse
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")
    from persim import PersImage
    lo, hi = LAB_ARGS["birth_range"]
    pim = PersImage(pixels=[size, size], spread=LAB_ARGS["spread"], specs={"minBD": lo, "maxBD": hi})
  out = []
  for window in np.asarray(x, np.float64):
    per_channel = []
    for ch in range(window.shape[1]):
      v = window[:, ch]
      n = len(v)
      rows = np.concatenate((np.arange(n - 1), np.arange(n)))
      cols = np.concatenate((np.arange(1, n), np.arange(n)))
      vals = np.concatenate((np.maximum(v[0:-1], v[1::]), v))
      d = sparse.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
      dgm = ripser(d, maxdim=0, distance_matrix=True)["dgms"][0]
      dgm = dgm[dgm[:, 1] - dgm[:, 0] > 1e-3, :]
      dgm = dgm[~np.isinf(dgm)[:, 1]]
      lifetime = np.ones(len(dgm))
      for h in range(len(dgm)):
        lifetime[h] = dgm[h][1] - dgm[h][0]
      img = pim.transform(dgm[np.greater(lifetime, LAB_ARGS["threshold"])])
      if np.max(img) > 0:
        img = img / np.max(img)
      per_channel.append(img)
    out.append(np.asarray(per_channel))
  return np.asarray(out)


def _factors(x: jax.Array, size: int) -> gaf.GafFactors:
  """The images of `x` as rank-M factors (rows: persistence masses x weight / max, cols: birth
  masses), for the conv_factors route."""
  birth, death = pi.persistence_bars(x)
  keep = pi._longer_than(birth, death, LAB_ARGS["threshold"])
  pers = jnp.where(keep, death - birth, 0)
  birth = jnp.where(keep, birth, 0)
  b_lo, b_hi, p_lo, p_hi = (jnp.asarray(e, jnp.float32) for e in pi.grid(size, (-1.0, 1.0)))
  cols = pi._masses(b_lo, b_hi, birth, LAB_ARGS["spread"])                   # (B, M, C, S)
  rows = pi._masses(p_lo[::-1], p_hi[::-1], pers, LAB_ARGS["spread"]) * pers[..., None]
  peak = jnp.max(jnp.einsum("bmcr,bmck->bcrk", rows, cols), axis=(2, 3))      # (B, C)
  rows = rows / jnp.where(peak > 0, peak, 1)[:, None, :, None]
  return gaf.GafFactors(rows.transpose(0, 3, 1, 2), cols.transpose(0, 3, 1, 2))  # (B, S, M, C)


def _stem(x: jax.Array, size: int, repeats: int) -> dict:
  conv = Conv(16, 3, padding=1, impl="auto")
  params = conv.init(jax.random.key(0), jnp.zeros((1, size, size, x.shape[-1])))
  g = jnp.ones((x.shape[0], size, size, 16), jnp.float32)
  make = lambda x: pi.persistence_image(x, size)

  def step(inputs_of):
    def loss(p, x):
      return jnp.sum(conv.apply(p, inputs_of(x)) * g)
    return jax.jit(jax.value_and_grad(loss))

  images = jax.block_until_ready(jax.jit(make)(x))
  factors = jax.block_until_ready(jax.jit(lambda x: _factors(x, size))(x))
  ident = lambda v: v
  dense_fwd = jax.jit(lambda p, x: conv.apply(p, make(x)))
  dense_step, conv_step = step(make), step(ident)
  apply = jax.jit(conv.apply)
  out = {
      "dense_fwd_ms": median_ms(lambda: dense_fwd(params, x), repeats),
      "dense_step_ms": median_ms(lambda: dense_step(params, x), repeats),
      "factors_fwd_ms": median_ms(lambda: apply(params, factors), repeats),
      "factors_step_ms": median_ms(lambda: conv_step(params, factors), repeats),
      "conv_only_fwd_ms": median_ms(lambda: apply(params, images), repeats),
      "conv_only_step_ms": median_ms(lambda: conv_step(params, images), repeats),
  }
  # The two routes compute the same convolution.
  out["factors_max_abs_diff"] = float(jnp.max(jnp.abs(apply(params, factors)
                                                      - apply(params, images))))
  return out


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--length", type=int, default=100)
  parser.add_argument("--channels", type=int, default=40)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--lab_windows", type=int, default=4)
  parser.add_argument("--no-lab", dest="lab", action="store_false")
  parser.add_argument("--no-stem", dest="stem", action="store_false")
  args = parser.parse_args(argv[1:])
  b, l, c, s = args.batch, args.length, args.channels, args.size

  x_np = windows(b, l, c)
  x = jnp.asarray(x_np)
  jitted = jax.jit(lambda x: pi.persistence_image(x, s))
  birth, death = jax.jit(pi.persistence_bars)(x)
  bars = float(jnp.mean(jnp.sum(pi._longer_than(birth, death, LAB_ARGS["threshold"]), axis=1)))
  out = {"device": jax.devices()[0].device_kind, "batch": b, "length": l, "channels": c,
         "size": s, "bar_slots": pi.num_slots(l), "bars_per_channel": round(bars, 1),
         "cpu_group": pi._CPU_GROUP}
  out["jkd_ms"] = median_ms(lambda: jitted(x), args.repeats)
  group, pi._CPU_GROUP = pi._CPU_GROUP, b
  try:
    ungrouped = jax.jit(lambda x: pi.persistence_image(x, s))
    out["jkd_ungrouped_ms"] = median_ms(lambda: ungrouped(x), args.repeats)
  finally:
    pi._CPU_GROUP = group
  out["jkd_images_per_s"] = b * c / (out["jkd_ms"] / 1e3)
  if args.lab:
    n = min(args.lab_windows, b)
    lab_images(x_np[:1, :, :1], s)                        # imports and PersImage set up
    t0 = time.perf_counter()
    want = lab_images(x_np[:n], s)
    lab_s = time.perf_counter() - t0
    out["lab_windows"] = n
    out["lab_ms_per_window"] = 1e3 * lab_s / n
    out["lab_images_per_s"] = n * c / lab_s
    out["lab_over_jkd"] = out["jkd_images_per_s"] / out["lab_images_per_s"]
    got = np.asarray(jitted(x))[:n]
    out["max_abs_err"] = float(np.abs(got - want.transpose(0, 2, 3, 1)).max())
  if args.stem:
    out.update(_stem(x, s, min(args.repeats, 3)))
    out["factors_step_over_dense_step"] = out["factors_step_ms"] / out["dense_step_ms"]
  print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in out.items()}))
  return 0
