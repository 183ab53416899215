"""Benchmark the real vmapped training program (`jkd.engine.train.make_train_epoch`) on synthetic data.

  python -m jkd.bench train-step --model=wrn16_1 --runs=9 --batch=128 --length=100 --channels=40 \
      --classes=12 --steps=20 [--ndim=2] [--devices=0] [--conv_impl=gemm] [--torch]

The runs are spread over XLA devices as `jkd.main` does (`--devices=0`: one CPU device per run,
`jkd.engine.parallel.use_cpu_devices`; 1: every run vmapped on one device). With `--ndim=2` the model is
the 2-D variant fed the GAF images of the windows (`--image_size`), computed in the step (as
rank-2 factors, `jkd.images.gaf.gaf_factors`, as `jkd.main` feeds them).
Prints one JSON line: `compile_s` (lowering + XLA compile of the R-run epoch of `steps` steps),
`ms_per_step` (one step of every run), `samples_per_s` (all runs together). `--torch` adds a
PyTorch eager loop training the same R models one after another (same WRN, batch, SGD momentum 0.9
with weight decay, cross-entropy; images precomputed when 2-D; on the GPU when there is one) in its
own process, one of its epochs after each of jkd's: its samples/s, `speedup` = jax / torch (ratio of
the median epochs) and `speedup_pairs` (each alternating pair).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import jax
import jax.numpy as jnp

import jkd.models
from jkd.bench import Reference, _epoch
from jkd import config as config_lib
from jkd.engine import parallel
from jkd import distill
from jkd.engine import train as train_lib


def bench_jax(a: argparse.Namespace, reference: Any = None) -> dict[str, Any]:
  config = config_lib.base()
  config.data.name = "synthetic"
  config.train.batch_size = a.batch
  config.optim.schedule = "constant"
  config.model.kwargs = {"conv_impl": a.conv_impl}
  config.model.ndim = a.ndim
  config.model.image_size = a.image_size
  m = parallel.mesh()
  data, inputs = _epoch.synthetic(config, a, m)
  model = jkd.models.create(a.model, num_classes=a.classes, ndim=a.ndim,
                            **config.model.kwargs.to_dict())
  sample = train_lib.model_input(config, jnp.zeros((1, a.length, a.channels)),
                                 jnp.zeros(a.channels), jnp.ones(a.channels))
  state = train_lib.init_state(model, config, inputs.key, sample, inputs.hp)
  state, inputs = parallel.shard_runs(state, m), parallel.shard_runs(inputs, m)
  step = train_lib.Step(model, config, distill.make_objective(config), a.classes)
  epoch_fn = train_lib.make_train_epoch(step, a.steps, mesh=m)
  out = _epoch.time_epochs(epoch_fn, state, (data, inputs, None), a,
                           {"train": reference} if reference else None)
  terms, epoch_s, ref_s = out.pop("terms"), out.pop("epoch_s"), out.pop("ref_s")
  result = {"devices": m.size, **out, "final_loss": float(jnp.mean(terms["loss"]))}
  if reference is not None:
    speed, result["speedup"], result["speedup_pairs"] = _epoch.versus(a, epoch_s, ref_s["train"])
    result["torch"] = {**reference.info, **speed}
  return result


def torch_loops(a: argparse.Namespace):
  """The same R models trained one after another with PyTorch eager (channels-first): one
  epoch of `a.steps` steps per model (a `jkd.bench.Reference` factory)."""
  import torch
  from torch import nn

  from jkd.bench._torch_wrn import WRN, pick_device, synchronize

  dev = pick_device(a.torch_device)

  def wrn():
    return WRN(a.model, a.channels, a.classes, ndim=a.ndim).to(dev)

  torch.manual_seed(0)
  nets = [wrn() for _ in range(a.runs)]
  opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4) for m in nets]
  side = (a.length,) if a.ndim == 1 else (a.image_size, a.image_size)
  x = torch.randn(a.steps, a.batch, a.channels, *side).to(dev)
  y = torch.randint(0, a.classes, (a.steps, a.batch)).to(dev)

  def epoch():
    for net, opt in zip(nets, opts):          # run after run, as the lab's scripts do
      for s in range(a.steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[s])[0], y[s]).backward()
        opt.step()
    synchronize(dev)

  info = {"threads": torch.get_num_threads(), "version": torch.__version__, "device": str(dev)}
  return {"train": epoch}, info


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  p.add_argument("--model", default="wrn16_1")
  p.add_argument("--runs", type=int, default=9)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--length", type=int, default=100)
  p.add_argument("--channels", type=int, default=40)
  p.add_argument("--classes", type=int, default=12)
  p.add_argument("--steps", type=int, default=20, help="steps per timed epoch (one lax.scan)")
  p.add_argument("--repeats", type=int, default=2, help="timed epochs (median)")
  p.add_argument("--ndim", type=int, default=1, choices=(1, 2))
  p.add_argument("--image_size", type=int, default=64, help="GAF side when --ndim=2")
  p.add_argument("--conv_impl", default="auto", choices=jkd.models.layers.CONV_IMPLS)
  _epoch.add_devices_flag(p)
  p.add_argument("--torch", action="store_true", help="add the PyTorch eager loop and the ratio")
  p.add_argument("--torch_device", default="auto",
                 help="device of the PyTorch loop: auto (the GPU when there is one), cpu, cuda")
  a = p.parse_args(argv[1:])
  if a.torch and not a.model.startswith("wrn"):
    p.error("--torch needs a wrn{d}_{k} model")
  flags = {k: v for k, v in vars(a).items() if k != "torch"}
  reference = Reference(torch_loops, a) if a.torch else None   # started before XLA's threads
  _epoch.set_devices(a)
  try:
    result: dict[str, Any] = {"bench": "train-step", **flags, **bench_jax(a, reference),
                              "backend": jax.default_backend()}
  finally:
    if reference is not None:
      reference.close()
  print(json.dumps(result))
  return 0
