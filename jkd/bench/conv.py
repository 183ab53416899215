"""Train-step speed of a model, one run vs `runs` runs vmapped, for both conv formulations.

    python -m jkd.bench conv --model=wrn16_1 --runs=9 --batch=128 --length=100 --channels=40 \
        --classes=12 --steps=5 [--ndim=2] [--impls=gemm,lax] [--torch]

A step is forward + backward + optax.sgd(momentum 0.9) update with BatchNorm statistics updated.
(a) one run, unvmapped; (b) `runs` independent runs under jax.vmap (params, optimiser state and
batch stats with a leading runs axis, data `(runs, B, L, C)`). With ndim=2 the input is an image
`(B, length, length, C)` (the GAF case: length 64). `--torch` adds a PyTorch eager reference
step of a WRN16-1 written here (any wrn{d}_{k}). Prints one JSON line: median ms per step, ms per run,
and compile seconds per impl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jkd import models


def make_step(model, tx) -> Callable:
  """`step(params, batch_stats, opt_state, x, y) -> (params, batch_stats, opt_state, loss)`."""

  def loss_fn(params, batch_stats, x, y):
    (logits, _), new = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                   mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

  def step(params, batch_stats, opt_state, x, y):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return step


def _time(fn: Callable, args: tuple, steps: int) -> tuple[float, float]:
  """(compile seconds, median ms per step) of jitted `fn`, threading the state through."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=(0, 1, 2)).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  state, data = args[:3], args[3:]
  state = compiled(*state, *data)[:3]  # warm-up
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    out = compiled(*state, *data)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) * 1e3)
    state = out[:3]
  return compile_s, statistics.median(times)


def bench_jax(a: argparse.Namespace, impl: str) -> dict[str, float]:
  model = models.create(a.model, num_classes=a.classes, ndim=a.ndim, conv_impl=impl)
  tx = optax.sgd(0.01, momentum=0.9)
  step = make_step(model, tx)
  spatial = (a.length,) * a.ndim
  key = jax.random.key(0)

  def init(k):
    v = model.init(k, jnp.zeros((1, *spatial, a.channels)), train=False)
    return v["params"], v["batch_stats"], tx.init(v["params"])

  x = jax.random.normal(key, (a.runs, a.batch, *spatial, a.channels))
  y = jax.random.randint(key, (a.runs, a.batch), 0, a.classes)
  single = _time(step, (*jax.jit(init)(key), x[0], y[0]), a.steps)
  keys = jax.random.split(key, a.runs)
  vmapped = _time(jax.vmap(step), (*jax.jit(jax.vmap(init))(keys), x, y), a.steps)
  return {"single_ms": round(single[1], 2), "vmap_ms_per_step": round(vmapped[1], 2),
          "vmap_ms_per_run": round(vmapped[1] / a.runs, 2),
          "single_compile_s": round(single[0], 2), "vmap_compile_s": round(vmapped[0], 2)}


def bench_torch(a: argparse.Namespace) -> dict[str, Any]:
  """PyTorch eager step of the same WRN (channels-first), for reference."""
  import torch
  from torch import nn as tnn

  depth, widen = (int(v) for v in a.model[3:].split("_"))
  n = (depth - 4) // 6
  Conv = tnn.Conv1d if a.ndim == 1 else tnn.Conv2d
  BN = tnn.BatchNorm1d if a.ndim == 1 else tnn.BatchNorm2d

  class Block(tnn.Module):
    def __init__(self, cin, cout, stride, projection):
      super().__init__()
      self.batch_norm1, self.batch_norm2 = BN(cin), BN(cout)
      self.conv1 = Conv(cin, cout, 3, stride, 1, bias=False)
      self.conv2 = Conv(cout, cout, 3, 1, 1, bias=False)
      self.conv_inp = Conv(cin, cout, 1, stride, 0, bias=False) if projection else None

    def forward(self, x):
      a = torch.relu(self.batch_norm1(x))
      h = self.conv2(torch.relu(self.batch_norm2(self.conv1(a))))
      return (self.conv_inp(a) if self.conv_inp is not None else x) + h

  blocks, cin = [Conv(a.channels, 16, 3, 1, 1, bias=False)], 16
  for width, stride in zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2)):
    for i in range(n):
      blocks.append(Block(cin, width, stride if i == 0 else 1,
                          i == 0 and (stride != 1 or width != cin)))
      cin = width
  net = tnn.Sequential(*blocks, BN(cin), tnn.ReLU(),
                       tnn.AdaptiveAvgPool1d(1) if a.ndim == 1 else tnn.AdaptiveAvgPool2d(1),
                       tnn.Flatten(), tnn.Linear(cin, a.classes))
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  x = torch.randn(a.batch, a.channels, *(a.length,) * a.ndim)
  y = torch.randint(0, a.classes, (a.batch,))
  times = []
  for i in range(a.steps + 1):
    t0 = time.perf_counter()
    opt.zero_grad()
    tnn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    if i:
      times.append((time.perf_counter() - t0) * 1e3)
  return {"single_ms": round(statistics.median(times), 2), "threads": torch.get_num_threads()}


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  p.add_argument("--model", default="wrn16_1")
  p.add_argument("--runs", type=int, default=9)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--length", type=int, default=100, help="signal length, or image side (ndim=2)")
  p.add_argument("--channels", type=int, default=40)
  p.add_argument("--classes", type=int, default=12)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--ndim", type=int, default=1, choices=(1, 2))
  p.add_argument("--impls", default="gemm,lax", help="comma-separated conv impls to measure")
  p.add_argument("--torch", action="store_true", help="add a PyTorch eager WRN reference")
  a = p.parse_args(argv[1:])
  if a.torch and not a.model.startswith("wrn"):
    p.error("--torch needs a wrn{d}_{k} model")
  result: dict[str, Any] = {"bench": "conv", **{k: v for k, v in vars(a).items() if k != "torch"},
                            "backend": jax.default_backend()}
  if a.torch:  # first: once XLA's thread pools have run, torch's threads compete with them
    result["torch"] = bench_torch(a)
  for impl in [i for i in a.impls.split(",") if i]:
    result[impl] = bench_jax(a, impl)
  print(json.dumps(result))
  return 0
