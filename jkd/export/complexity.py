"""Every stage's model cost, for the pipeline's report: parameters, FLOPs, ONNX size, latency.

Per stage (its run 0, last epoch, as `python -m jkd.export` writes it):

* parameters: the variables evaluation computes with (a SimKD student's projector and the copy of
  its teacher's classifier included; `jkd.export.Trained.num_params`);
* FLOPs per window: `count_flops`, 2 per multiply-add of every convolution and matrix product in
  the traced function (raw window -> logits: normalisation, a GAF model's PAA and its dense
  first convolution included), the convention of compression tables; and XLA's cost analysis of
  the same function at batch 1 (`xla_flops`, which also counts elementwise operations);
* the ONNX file's size, float and int8 (`jkd.export.runtime.quantize_int8`, calibrated on the fold's
  training windows), and their accuracy on the fold's test windows;
* latency per window: onnxruntime, one thread, batch 1, median of `calls` calls after warm-up.

`measure(workdir)` does every stage of a pipeline workdir (a few seconds each: one trace, one
compile for the cost analysis, one quantisation, 2 x `calls` tiny inferences); `markdown` prints
the table, teachers first, each student's compression against the largest teacher.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

CALLS = 200


def count_flops(fn: Callable, example: np.ndarray) -> int:
  """2 x the multiply-adds of every convolution and `dot_general` of `fn` on ONE window shaped
  like `example[0]` (counted from the jaxpr; scans and loops times their trip count)."""
  from jkd.export import plain_xla
  with plain_xla():
    closed = jax.make_jaxpr(fn)(jnp.zeros((1, *example.shape[1:]), jnp.float32))
  return 2 * _macs(closed.jaxpr)


def _macs(jaxpr, times: int = 1) -> int:
  total = 0
  for e in jaxpr.eqns:
    name = e.primitive.name
    if name == "conv_general_dilated":
      out, kernel = e.outvars[0].aval.shape, e.invars[1].aval.shape
      rhs = e.params["dimension_numbers"].rhs_spec
      total += math.prod(out) * math.prod(kernel) // kernel[rhs[0]]
    elif name == "dot_general":
      (lc, _), _ = e.params["dimension_numbers"]
      lhs = e.invars[0].aval.shape
      total += math.prod(e.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
    n = int(e.params.get("length", 1)) if name == "scan" else 1
    for p in e.params.values():
      inner = getattr(p, "jaxpr", p)
      if isinstance(inner, jax.extend.core.Jaxpr):
        total += _macs(inner, n)
  return total * times


def xla_flops(fn: Callable, example: np.ndarray) -> float | None:
  """XLA's cost analysis of `fn` compiled for one window (None where XLA gives none)."""
  from jkd.export import plain_xla
  x = jax.ShapeDtypeStruct((1, *example.shape[1:]), jnp.float32)
  try:
    with plain_xla():
      cost = jax.jit(fn).lower(x).compile().cost_analysis()
  except Exception:  # noqa: BLE001 - a backend without cost analysis
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None else None


def latency(path_or_model: Any, window: tuple, calls: int = CALLS) -> float:
  """Median seconds of one call on one window: onnxruntime, one thread, after 10 warm-up calls."""
  from jkd.export import onnx as ox
  from jkd.export import runtime
  sess = runtime.session(path_or_model, threads=1)
  x = np.random.default_rng(0).normal(size=(1, *window)).astype(np.float32)
  for _ in range(10):
    sess.run([ox.OUTPUT], {ox.INPUT: x})
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    sess.run([ox.OUTPUT], {ox.INPUT: x})
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def of_run(workdir: str, run: int = 0, which: str = "last", calls: int = CALLS) -> dict:
  """One run's row (see the module docstring); without the export extra, parameters and FLOPs."""
  import jkd.export as ex
  from jkd.export import onnx as ox
  from jkd.export import runtime
  t = ex.load(workdir, run, which)
  row: dict[str, Any] = {"model": t.describe, "run": run, "which": which,
                         "parameters": t.num_params}
  with ex.plain_xla():
    row["flops"] = count_flops(t.logits, t.x_train)
    row["xla_flops"] = xla_flops(t.logits, t.x_train)
    if not ox.available():
      row["onnx"] = f"not measured: {ox.EXTRA}"
      return row
    try:
      model = ox.to_onnx(t.logits, t.x_train[:1])
    except ox.Unsupported as e:
      row["onnx"] = f"not exported: {e}"
      return row
  with tempfile.TemporaryDirectory() as d:
    path, qpath = os.path.join(d, "m.onnx"), os.path.join(d, "m.int8.onnx")
    with open(path, "wb") as f:
      f.write(model.SerializeToString())
    runtime.quantize_int8(path, qpath, t.x_train[:256])
    window = tuple(t.x_train.shape[1:])
    for key, p in (("float", path), ("int8", qpath)):
      sess = runtime.session(p)
      row[key] = {"bytes": os.path.getsize(p),
                  "latency_ms": 1e3 * latency(p, window, calls),
                  "accuracy": ex.accuracy(runtime.predict(sess, t.x_test), t.y_test)}
  return row


def measure(workdir: str, calls: int = CALLS, log: Callable[[str], None] | None = None
            ) -> dict[str, Any]:
  """{stage: row} for every stage of a pipeline workdir; a stage that cannot be measured gets
  {'error': why}."""
  from jkd.report import workdirs
  out = {}
  t0 = time.perf_counter()
  for name in workdirs.stage_names(workdir):
    d = os.path.join(workdir, name)
    if not os.path.exists(os.path.join(d, "runs.json")):
      continue
    try:
      out[name] = of_run(d, 0, "last", calls)
    except Exception as e:  # noqa: BLE001 - the report must still be written
      out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
  if log:
    log(f"complexity of {len(out)} stages measured in {time.perf_counter() - t0:.1f}s")
  return out


def _k(n: float | None, scale: float, digits: int = 1) -> str:
  return "—" if n is None else f"{n / scale:,.{digits}f}"


def markdown(rows: dict[str, dict]) -> str:
  """The compression table: teachers first; ratios against the largest teacher."""
  if not rows:
    return ""
  teachers = [r for n, r in rows.items() if n.startswith("teacher_") and "parameters" in r]
  ref = max(teachers, key=lambda r: r["parameters"]) if teachers else None
  lines = ["", "## Model complexity (per window; run 0, last epoch)", "",
           "Parameters evaluation uses; FLOPs = 2 × multiply-adds of convolutions and matrix "
           "products (XLA's cost analysis, which also counts elementwise operations, in "
           "results.json); ONNX file size float / int8 (static, calibrated on the fold's "
           "training windows); onnxruntime latency, one CPU thread, batch 1, median of "
           f"{CALLS} calls; test accuracy of fold 0's run, float / int8."
           + (" Compression against the largest teacher." if ref else ""), "",
           "| stage | model | params (k) | MFLOPs | ONNX KB float / int8 | latency ms float / "
           "int8 | acc % float / int8 | × fewer params / FLOPs |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    if "error" in r:
      lines.append(f"| {name} | — | — | — | — | — | — | {r['error']} |")
      continue
    f, q = r.get("float"), r.get("int8")
    size = (f"{_k(f['bytes'], 1e3)} / {_k(q['bytes'], 1e3)}" if f
            else "not exported" if "onnx" in r else "—")   # why: results.json
    lat = f"{f['latency_ms']:.3f} / {q['latency_ms']:.3f}" if f else "—"
    acc = f"{100 * f['accuracy']:.2f} / {100 * q['accuracy']:.2f}" if f else "—"
    ratio = "—"
    if ref is not None and r is not ref and not name.startswith("teacher_"):
      ratio = (f"{ref['parameters'] / r['parameters']:.1f} / "
               f"{ref['flops'] / r['flops']:.1f}" if r["flops"] else "—")
    lines.append(f"| {name} | {r['model']} | {_k(r['parameters'], 1e3)} | "
                 f"{_k(r['flops'], 1e6, 2)} | {size} | {lat} | {acc} | {ratio} |")
  return "\n".join(lines) + "\n"
