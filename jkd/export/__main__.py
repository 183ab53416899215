"""`python -m jkd.export`: a trained run as an ONNX model (float, optionally int8) or StableHLO.

  python -m jkd.export --workdir=W [--stage=S] --run=I [--which=last|best] --out=FILE.onnx \
      [--quantize=int8] [--format=onnx|stablehlo]

The model's input is the raw windows `(B, L, C)` float32 as the data source gives them (the
fold's normalisation and a 2-D model's GAF images inside), its output the logits `(B, classes)`,
the batch dynamic (docs/export.md). The export is checked on the fold's test windows with
onnxruntime (largest logit difference to jkd's, accuracy); `--quantize=int8` also writes
FILE.int8.onnx, statically quantised on the fold's training windows, and prints its accuracy.
Both are recorded in FILE.json. A user error is one line on stderr, exit status 2, nothing
written.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

def _define_flags() -> dict:
  """The command's flags, defined only when it runs (importing `run` defines none)."""
  return {
      "workdir": flags.DEFINE_string("workdir", None, "a jkd workdir, or a pipeline's with --stage"),
      "stage": flags.DEFINE_string("stage", None, "the pipeline stage (W/<stage>)"),
      "run": flags.DEFINE_integer("run", 0, "the run index (runs.json)"),
      "which": flags.DEFINE_enum("which", "last", ["last", "best"], "the last epoch's or the "
                                 "best epoch's variables"),
      "out": flags.DEFINE_string("out", None, "the output file (.onnx, or with "
                                 "--format=stablehlo any)"),
      "quantize": flags.DEFINE_enum("quantize", None, ["int8"], "also write FILE.int8.onnx "
                                    "(static, calibrated on the fold's training windows)"),
      "format": flags.DEFINE_enum("format", "onnx", ["onnx", "stablehlo"], "ONNX, or "
                                  "jax.export's serialized StableHLO (no extra needed)"),
  }


def _fail(msg: str) -> None:
  print(f"jkd.export: {msg}", file=sys.stderr)
  sys.exit(2)


def run(workdir: str, stage: str | None, run_index: int, which: str, out: str,
        quantize: str | None = None, fmt: str = "onnx", log=print) -> dict:
  """Export; returns the record written to OUT.json (ExportError on a user error)."""
  import jkd.export as ex
  from jkd.export import onnx as ox
  from jkd.export import runtime
  if fmt == "onnx" and not ox.available():
    raise ex.ExportError(f"ONNX export needs onnx and onnxruntime: {ox.EXTRA}")
  if quantize and fmt != "onnx":
    raise ex.ExportError("--quantize applies to --format=onnx")
  if not out:
    raise ex.ExportError("--out=FILE is required")
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise ex.ExportError(f"--out={out}: folder {folder} does not exist")
  d = ex.stage_dir(workdir, stage)
  ex.check(d, run_index, which)
  t = ex.load(d, run_index, which)
  import jax
  import numpy as np
  # The reference: the logits as jkd's evaluation computes them (its kernels, GAF factors).
  want = np.asarray(jax.jit(t.engine_logits)(t.x_test)) if len(t.x_test) else np.zeros((0, 0))
  record = {"workdir": os.path.abspath(d), "run": t.run, "which": which, "model": t.describe,
            "parameters": t.num_params, "test_windows": int(len(t.y_test)),
            "jkd_accuracy": ex.accuracy(want, t.y_test)}
  if fmt == "stablehlo":
    with ex.plain_xla():
      blob = stablehlo_bytes(t)
    _write(out, blob)
    record["format"] = "stablehlo"
    record["bytes"] = len(blob)
  else:
    with ex.plain_xla():
      try:
        model = ox.to_onnx(t.logits, t.x_test[:1] if len(t.x_test) else t.x_train[:1],
                           doc=f"jkd {t.describe}, {d} run {run_index} ({which})")
      except ox.Unsupported as e:
        image = t.config.model.get("image", "gaf") if t.config.model.ndim == 2 else None
        why = ("persistence images (a sequential persistence pairing) cannot be expressed in "
               "ONNX by this converter; " if image == "pi" else "")
        raise ex.ExportError(f"{why}{e}; export --format=stablehlo instead") from None
    _write(out, model.SerializeToString())
    sess = runtime.session(out)
    got = runtime.predict(sess, t.x_test)
    record.update(format="onnx", opset=ox.OPSET, bytes=os.path.getsize(out),
                  max_abs_logit_diff=float(np.abs(got - want).max()) if len(got) else 0.0,
                  max_abs_logit=float(np.abs(want).max()) if len(got) else 0.0,
                  onnx_accuracy=ex.accuracy(got, t.y_test))
    log(f"{out}: {t.describe}, {record['parameters']} parameters, {record['bytes']} bytes; on the "
        f"fold's {len(t.y_test)} test windows: accuracy {100 * record['onnx_accuracy']:.2f} % "
        f"(jkd {100 * record['jkd_accuracy']:.2f} %), largest logit difference "
        f"{record['max_abs_logit_diff']:.2e} (largest logit {record['max_abs_logit']:.1f})")
    if quantize == "int8":
      q = int8_path(out)
      runtime.quantize_int8(out, q, t.x_train)
      qgot = runtime.predict(runtime.session(q), t.x_test)
      record["int8"] = {"path": q, "bytes": os.path.getsize(q),
                        "accuracy": ex.accuracy(qgot, t.y_test),
                        "calibration_windows": int(len(t.x_train))}
      log(f"{q}: int8 (static, calibrated on {len(t.x_train)} training windows), "
          f"{record['int8']['bytes']} bytes; test accuracy {100 * record['int8']['accuracy']:.2f} "
          f"% (float {100 * record['onnx_accuracy']:.2f} %)")
  _write(out + ".json", json.dumps(record, indent=1).encode())
  return record


def int8_path(out: str) -> str:
  root, ext = os.path.splitext(out)
  return f"{root}.int8{ext or '.onnx'}"


def stablehlo_bytes(t) -> bytes:
  """`jax.export` of the logits with a symbolic batch: serialized StableHLO (dependency-free;
  load with `jax.export.deserialize`)."""
  import jax
  (b,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((b, *t.x_train.shape[1:]), jax.numpy.float32)
  return bytes(jax.export.export(jax.jit(t.logits), platforms=("cpu",))(spec).serialize())


def _write(path: str, data: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(" ".join(str(e).split()))


def main(argv, f: dict) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)   # orbax's restore lines
  import jkd.export as ex
  if not f["workdir"].value:
    _fail("--workdir=W is required")
  try:
    run(f["workdir"].value, f["stage"].value, f["run"].value, f["which"].value, f["out"].value,
        f["quantize"].value, f["format"].value)
  except ex.ExportError as e:
    _fail(str(e))


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=parse_flags)
