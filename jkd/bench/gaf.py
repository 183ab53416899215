"""Speed of `jkd.images.gaf.gramian_angular_field` against pyts, the memory floor, and a conv consuming it.

    python -m jkd.bench gaf --batch=128 --length=100 --channels=40 --size=64 --repeats=10 \
        [--method=summation] [--no-pyts]

Times (median ms over `repeats`, after a warm-up call):
  jkd: the jitted field `(B, L, C) -> (B, S, S, C)` float32, until `block_until_ready`;
  pyts: `pyts.image.GramianAngularField` on the same data as `(C * B, L)` float64 (one call for
    every channel; the transposition to channels-last is not counted);
  jkd_reuse: the same field made batch after batch into the previous batch's memory
    (`jkd.images.gaf.image_batches`, the buffer donated), as a loop exporting images would;
  copy: `np.copy` of a float32 array the size of the output (the memory-bandwidth floor with a
    fresh output), copyto: `np.copyto` into an existing one (the floor when memory is reused);
  stem: a 3x3 conv stem `Conv(16, 3, padding=1)` (gemm and lax impls) on the field, with the field
    computed inside the same jit (`fused`) or in a separate jit and handed over (`split`), and the
    conv alone on a ready field (`conv_only`).
  stem_factors: the same stem on the field's rank-2 factors (`jkd.images.gaf.gaf_factors`, what jkd's
    2-D models receive), factors computed in the same jit; the images are never built.
`fused_materializes_field` says whether the compiled fused program still holds a `(B, S, S, C)`
buffer, i.e. whether XLA computed the field where the conv consumes it (False) or not (True).
`jkd_page_faults` counts minor page faults per call: XLA:CPU maps every large buffer afresh, and
with 4 KiB pages the kernel's faulting dominates the time. Start Python with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (transparent huge pages for malloc, as numpy does for its
own arrays) to see the difference. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jkd.images.gaf import gaf_factors, gramian_angular_field, image_batches
from jkd.bench import median_ms
from jkd.models.layers import Conv


def _faults_per_call(fn: Callable[[], object], repeats: int) -> float:
  jax.block_until_ready(fn())
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


def _stem(impl: str, gaf: Callable, x: jax.Array, size: int, repeats: int) -> dict:
  conv = Conv(16, 3, padding=1, impl=impl)
  params = conv.init(jax.random.key(0), jnp.zeros((1, size, size, x.shape[-1])))
  fused = jax.jit(lambda p, x: conv.apply(p, gaf(x)))
  apply = jax.jit(conv.apply)
  field = jax.block_until_ready(jax.jit(gaf)(x))
  hlo = fused.lower(params, x).compile().as_text()
  entry = hlo[hlo.index("ENTRY"):]
  shape = f"f32[{','.join(map(str, field.shape))}]"
  return {
      f"stem_{impl}_fused_ms": median_ms(lambda: fused(params, x), repeats),
      f"stem_{impl}_split_ms": median_ms(lambda: apply(params, jax.jit(gaf)(x)), repeats),
      f"stem_{impl}_conv_only_ms": median_ms(lambda: apply(params, field), repeats),
      f"stem_{impl}_fused_materializes_field": shape in entry,
  }


def _stem_factors(x: jax.Array, size: int, method: str, repeats: int) -> dict:
  conv = Conv(16, 3, padding=1, impl="loop")
  params = conv.init(jax.random.key(0), jnp.zeros((1, size, size, x.shape[-1])))
  stem = jax.jit(lambda p, x: conv.apply(p, gaf_factors(x, size, method=method)))
  return {"stem_factors_ms": median_ms(lambda: stem(params, x), repeats)}


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--length", type=int, default=100)
  parser.add_argument("--channels", type=int, default=40)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--method", default="summation")
  parser.add_argument("--no-pyts", dest="pyts", action="store_false")
  parser.add_argument("--no-stem", dest="stem", action="store_false")
  args = parser.parse_args(argv[1:])
  b, l, c, s = args.batch, args.length, args.channels, args.size

  x_np = np.random.default_rng(0).normal(size=(b, l, c)).astype(np.float32)
  x = jnp.asarray(x_np)
  gaf = lambda x: gramian_angular_field(x, s, method=args.method)
  jitted = jax.jit(gaf)
  out = {"device": jax.devices()[0].device_kind, "batch": b, "length": l, "channels": c, "size": s,
         "method": args.method, "output_mb": b * s * s * c * 4 / 1e6}
  out["jkd_ms"] = median_ms(lambda: jitted(x), args.repeats)
  out["jkd_page_faults"] = _faults_per_call(lambda: jitted(x), args.repeats)
  images, batch = image_batches(s, method=args.method), {"last": jitted(x)}

  def reuse():                       # each batch into the previous batch's memory (donated)
    batch["last"] = images(x, batch["last"])
    return batch["last"]
  out["jkd_reuse_ms"] = median_ms(reuse, args.repeats)
  out["jkd_reuse_page_faults"] = _faults_per_call(reuse, args.repeats)
  src = np.ones((b, s, s, c), np.float32)
  dst = np.zeros_like(src)
  out["copy_ms"] = median_ms(lambda: np.copy(src), args.repeats)
  out["copyto_ms"] = median_ms(lambda: np.copyto(dst, src), args.repeats)
  out["jkd_over_copy"] = out["jkd_ms"] / out["copy_ms"]
  out["jkd_reuse_over_copyto"] = out["jkd_reuse_ms"] / out["copyto_ms"]
  if args.pyts:
    from pyts.image import GramianAngularField
    rows = x_np.transpose(2, 0, 1).reshape(c * b, l).astype(np.float64)
    ref = GramianAngularField(image_size=s, method=args.method)
    out["pyts_ms"] = median_ms(lambda: ref.fit_transform(rows), max(1, args.repeats // 2))
    out["pyts_over_jkd"] = out["pyts_ms"] / out["jkd_ms"]
    out["pyts_over_jkd_reuse"] = out["pyts_ms"] / out["jkd_reuse_ms"]
  if args.stem:
    for impl in ("gemm", "lax"):
      out.update(_stem(impl, gaf, x, s, min(args.repeats, 3)))
      out[f"stem_{impl}_split_over_fused"] = (out[f"stem_{impl}_split_ms"]
                                              / out[f"stem_{impl}_fused_ms"])
    out.update(_stem_factors(x, s, args.method, min(args.repeats, 3)))
    out["stem_lax_fused_over_factors"] = out["stem_lax_fused_ms"] / out["stem_factors_ms"]
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))
  return 0
