"""`python -m jkd.bench export`: latency per window of the exported WRN16-1 student.

The student as `python -m jkd.export` writes it (raw windows in, the fold's normalisation inside),
run by onnxruntime on one thread at batch 1, against the same network in PyTorch eager on one
thread (`jkd.bench._torch_wrn`, in its own process: `jkd.bench.Reference`; `--torch`, torch
installed), and the int8 model (static, calibrated on random windows: latency only) against the
float one.

  python -m jkd.bench export [--length=100] [--channels=40] [--classes=12] [--calls=500] [--torch]

The calls alternate between the contenders, one window each, so both see the same
(shared, noisy) machine; each figure is the median of `--calls` calls. One JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import argparse


def _torch_factory(name: str, channels: int, classes: int, length: int):
  import torch
  from jkd.bench._torch_wrn import WRN
  torch.set_num_threads(1)
  torch.set_num_interop_threads(1)
  model = WRN(name, channels, classes).eval()
  x = torch.randn(1, channels, length)

  def one():
    with torch.no_grad():
      model(x)
  return {"one": one}, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  p.add_argument("--model", default="wrn16_1", help="the student")
  p.add_argument("--length", type=int, default=100, help="window length L (the lab's PAMAP2)")
  p.add_argument("--channels", type=int, default=40, help="channels C (PAMAP2: 40)")
  p.add_argument("--classes", type=int, default=12, help="classes (PAMAP2: 12)")
  p.add_argument("--calls", type=int, default=500, help="timed calls per contender")
  p.add_argument("--torch", action="store_true",
                 help="time PyTorch eager too (pip install torch; a note when it is missing)")
  FLAGS = p.parse_args(argv[1:])
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jkd.models
  from jkd.export import onnx as ox
  from jkd.export import runtime
  from jkd.export import complexity, plain_xla
  if not ox.available():
    print(f"jkd.bench export: {ox.EXTRA}")
    return 2
  L, C, K = FLAGS.length, FLAGS.channels, FLAGS.classes
  rng = np.random.default_rng(0)
  mean, std = rng.normal(size=C).astype(np.float32), (1 + rng.random(C)).astype(np.float32)
  model = jkd.models.create(FLAGS.model, num_classes=K, ndim=1, conv_impl="lax")
  x = rng.normal(size=(256, L, C)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]), train=False)
  fn = lambda w: model.apply(variables, (w - mean) / std, train=False)[0]
  with plain_xla():
    onnx_model = ox.to_onnx(fn, x[:1])
    flops = complexity.count_flops(fn, x)
  out = {"bench": "export", "model": FLAGS.model, "window": [L, C], "classes": K, "flops": flops,
         "cpu_count": os.cpu_count(), "calls": FLAGS.calls}
  with tempfile.TemporaryDirectory() as d:
    path, qpath = os.path.join(d, "m.onnx"), os.path.join(d, "m.int8.onnx")
    with open(path, "wb") as f:
      f.write(onnx_model.SerializeToString())
    runtime.quantize_int8(path, qpath, x)
    out["bytes"] = {"float": os.path.getsize(path), "int8": os.path.getsize(qpath)}
    sessions = {"onnx_float": runtime.session(path), "onnx_int8": runtime.session(qpath)}
  ref = None
  if FLAGS.torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      out["torch"] = "not installed: pip install torch (CPU wheel) to compare"
    else:
      from jkd.bench import Reference
      ref = Reference(_torch_factory, FLAGS.model, C, K, L)
      out["torch"] = ref.info
  window = np.ascontiguousarray(x[:1])
  feed = {ox.INPUT: window}
  for s in sessions.values():
    for _ in range(20):
      s.run([ox.OUTPUT], feed)
  if ref is not None:
    for _ in range(20):
      ref.seconds("one")
  times = {k: [] for k in (*sessions, *(["torch_eager"] if ref else []))}
  for _ in range(FLAGS.calls):
    for k, s in sessions.items():
      t0 = time.perf_counter()
      s.run([ox.OUTPUT], feed)
      times[k].append(time.perf_counter() - t0)
    if ref is not None:
      times["torch_eager"].append(ref.seconds("one"))
  if ref is not None:
    ref.close()
  ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
  out["latency_ms"] = {k: round(v, 4) for k, v in ms.items()}
  if "torch_eager" in ms:
    out["speedup_onnx_float_over_torch"] = round(ms["torch_eager"] / ms["onnx_float"], 2)
  out["speedup_int8_over_float"] = round(ms["onnx_float"] / ms["onnx_int8"], 2)
  print(json.dumps(out))
  return 0
