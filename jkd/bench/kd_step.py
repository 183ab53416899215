"""Benchmark the real `student_kd` training step of configs/pamap_spkd.py on synthetic data.

  python -m jkd.bench kd-step --runs=9 --batch=128 --steps=10 [--cached] [--image_size=64] \
      [--devices=0] [--torch [--torch_modes=no_grad,ref]]

Runs are spread over devices as `jkd.main` does (`--devices=0`: one CPU device per run).
The student, teachers, KD/SP objective and SP layers are those of the config's `student_kd` stage
(`jkd.pipeline.stage_config`), run through `jkd.train.make_train_epoch` with `jkd.kd.make`'s
objective and `jkd.teachers.make_guide`'s guide, on PAMAP2-shaped random windows (100 x 40, 12
classes) with random teacher variables. By default every teacher runs forward in the step (the
image teacher on GAF images computed in the step); `--cached` feeds outputs precomputed by
`jkd.teachers.make_cache_fn`, as the stage does when no augmentation is active.

Prints one JSON line: `compile_s` (lowering + XLA compile of the R-run epoch of `steps` steps),
`ms_per_step` (one step of every run), `samples_per_s` (all runs together), `student`, `teachers`,
`sp_layers`. `--torch` adds, in a separate process, a PyTorch eager loop training the R students
one after another with the same losses: `torch.no_grad` = frozen teachers under `no_grad` on
precomputed GAF images, `torch.ref` = the reference's pattern where the teachers' forward keeps
its graph and the backward also flows into them. One epoch of each runs after each of jkd's;
`speedup_no_grad` and `speedup_ref` = jax / torch (ratio of the median epochs), `*_pairs` the
ratio in each alternating round.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp

import jkd.models
from jkd.bench import Reference, _epoch
from jkd import config as config_lib
from jkd import kd as kd_lib
from jkd import parallel
from jkd import pipeline
from jkd import teachers as teachers_lib
from jkd import train as train_lib

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pamap_spkd.py")


def stage_config(a: argparse.Namespace):
  """The `student_kd` stage config of configs/pamap_spkd.py, with the benchmark's batch/image."""
  cfg = pipeline.stage_config(config_lib.load_file(os.path.normpath(CONFIG)), "student_kd",
                              "/tmp/jkd-bench-kd-step")
  cfg.train.batch_size = a.batch
  cfg.teachers.image.image_size = a.image_size
  cfg.train.init_from = ""
  if a.teacher_conv_impl:
    with cfg.unlocked():
      for name in cfg.teachers.order:
        cfg.teachers[name].kwargs.conv_impl = a.teacher_conv_impl
  return cfg


def describe(cfg) -> dict[str, Any]:
  return {"student": cfg.model.name,
          "teachers": {n: {"model": cfg.teachers[n].model, "ndim": cfg.teachers[n].ndim,
                           **({"image_size": cfg.teachers[n].image_size}
                              if cfg.teachers[n].ndim == 2 else {})}
                       for n in cfg.teachers.order},
          "sp_layers": list(cfg.loss.sp_layers) if cfg.loss.beta else [],
          "loss": {k: cfg.loss[k] for k in ("lam", "alpha", "temperature", "beta", "reduction")}}


def bench_jax(a: argparse.Namespace, references: dict[str, Any] | None = None
              ) -> dict[str, Any]:
  cfg = stage_config(a)
  m = parallel.mesh()
  x, y, inputs = _epoch.synthetic(cfg, a, m)
  model = jkd.models.create(cfg.model.name, num_classes=a.classes, ndim=cfg.model.ndim,
                            **cfg.model.kwargs.to_dict())
  state = parallel.shard_runs(train_lib.init_state(
      model, cfg, inputs.key, jnp.zeros((1, a.length, a.channels)), inputs.hp), m)
  inputs = parallel.shard_runs(inputs, m)
  ts = teachers_lib.build(cfg, a.classes)
  layers = kd_lib.needed_layers(cfg.loss)
  sample = jnp.zeros((1, a.length, a.channels))
  keys = jax.random.split(jax.random.PRNGKey(7), a.runs)
  aux, cache_s = [], 0.0
  for t in ts:                                 # random teacher variables, one set per run
    variables = jax.jit(jax.vmap(lambda k: t.model.init(k, t.input(sample), train=False)))(keys)
    variables = parallel.shard_runs(jax.device_get(variables), m)
    if a.cached:
      t0 = time.perf_counter()
      variables = jax.block_until_ready(teachers_lib.make_cache_fn(
          t, layers, cfg.train.eval_batch_size, m)(variables, x, inputs.mean, inputs.std))
      cache_s += time.perf_counter() - t0
    aux.append(variables)
  guide = teachers_lib.make_guide(ts, [a.cached] * len(ts), layers)
  epoch_fn = train_lib.make_train_epoch(model, cfg, kd_lib.make(cfg), a.steps, a.classes, guide,
                                        mesh=m)
  out = _epoch.time_epochs(epoch_fn, state, (x, y, inputs, None, aux), a, references)
  terms, epoch_s, ref_s = out.pop("terms"), out.pop("epoch_s"), out.pop("ref_s")
  result = {"devices": m.size, **({"cache_s": round(cache_s, 2)} if a.cached else {}), **out,
            "final_loss": float(jnp.mean(terms["loss"])),
            "final_terms": {k: round(float(jnp.mean(v)), 4) for k, v in terms.items()
                            if k not in ("loss", "steps")}}
  if references:
    result["torch"] = dict(next(iter(references.values())).info)
    for mode in references:
      result["torch"][mode], result[f"speedup_{mode}"], result[f"speedup_{mode}_pairs"] = (
          _epoch.versus(a, epoch_s, ref_s[mode]))
  return result


def torch_loops(a: argparse.Namespace, spec: dict[str, Any]):
  """The R students trained one after another with PyTorch eager (channels-first), the same
  losses, one epoch per call (a `jkd.bench.Reference` factory); `no_grad`: teachers frozen under
  no_grad, `ref`: the teachers' graph kept and the backward flowing into them (the lab's)."""
  import torch
  import torch.nn.functional as F

  from jkd.bench._torch_wrn import WRN, pick_device, synchronize

  dev = pick_device(a.torch_device)

  def wrn(name: str, ndim: int):
    return WRN(name, a.channels, a.classes, ndim).to(dev)

  loss_cfg, layers = spec["loss"], spec["sp_layers"]
  temp, lam, beta = loss_cfg["temperature"], loss_cfg["lam"], loss_cfg["beta"]
  order = list(spec["teachers"])
  w = [1.0] if len(order) == 1 else [1.0 - loss_cfg["alpha"], loss_cfg["alpha"]]

  def sim(f):
    q = f.flatten(1)
    return q @ q.t()

  def objective(zs, fs, y, outs):
    ce = F.cross_entropy(zs, y)
    kd = sum(wt * temp ** 2 * F.kl_div(F.log_softmax(zs / temp, 1), F.softmax(z / temp, 1),
                                       reduction="sum") / zs.numel()   # = nn.KLDivLoss()
             for wt, (z, _) in zip(w, outs))
    sp = 0.0
    for layer in layers:
      gt = sum(wt * sim(f[layer - 1]) for wt, (_, f) in zip(w, outs))
      d = F.normalize(sim(fs[layer - 1]), dim=1) - F.normalize(gt, dim=1)
      sp = sp + (d * d).sum() / zs.shape[0] ** 2
    return (1 - lam) * ce + lam * kd + beta * sp

  torch.manual_seed(0)
  students = [wrn(spec["student"], 1) for _ in range(a.runs)]
  teachers = [[wrn(spec["teachers"][t]["model"], spec["teachers"][t]["ndim"]).eval()
               for t in order] for _ in range(a.runs)]
  opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
          for m in students]
  x = torch.randn(a.steps, a.batch, a.channels, a.length).to(dev)
  s = a.image_size          # GAF images precomputed outside the timed loop (values in [-1, 1])
  img = (torch.rand(a.steps, a.batch, a.channels, s, s) * 2 - 1).to(dev)
  y = torch.randint(0, a.classes, (a.steps, a.batch)).to(dev)
  inputs = {1: x, 2: img}

  def epoch(no_grad: bool):
    for r in range(a.runs):                  # run after run, as the lab's scripts do
      for step in range(a.steps):
        opts[r].zero_grad()
        with torch.set_grad_enabled(not no_grad):
          outs = [t(inputs[spec["teachers"][name]["ndim"]][step])
                  for t, name in zip(teachers[r], order)]
        zs, fs = students[r](x[step])
        objective(zs, fs, y[step], outs).backward()
        opts[r].step()
        for t in teachers[r]:                # the lab never steps the teachers
          t.zero_grad(set_to_none=True)
    synchronize(dev)

  info = {"threads": torch.get_num_threads(), "version": torch.__version__, "device": str(dev)}
  return {"no_grad": lambda: epoch(True), "ref": lambda: epoch(False)}, info


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  p.add_argument("--runs", type=int, default=9)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--length", type=int, default=100)
  p.add_argument("--channels", type=int, default=40)
  p.add_argument("--classes", type=int, default=12)
  p.add_argument("--image_size", type=int, default=64, help="GAF image side of the image teacher")
  p.add_argument("--steps", type=int, default=2, help="steps per timed epoch (one lax.scan)")
  p.add_argument("--repeats", type=int, default=1, help="timed epochs (median)")
  p.add_argument("--cached", action="store_true",
                 help="feed precomputed teacher outputs (the stage's cache) instead of a forward")
  p.add_argument("--torch", action="store_true", help="add the PyTorch eager loops and ratios")
  p.add_argument("--torch_modes", default="no_grad,ref",
                 help="which PyTorch loops --torch runs: no_grad, ref or both (comma-separated)")
  p.add_argument("--torch_device", default="auto",
                 help="device of the PyTorch loops: auto (the GPU when there is one), cpu, cuda")
  p.add_argument("--teacher_conv_impl", default="", choices=("", *jkd.models.layers.CONV_IMPLS),
                 help="override the teachers' conv_impl (default: the config's)")
  _epoch.add_devices_flag(p)
  a = p.parse_args(argv[1:])
  spec = describe(stage_config(a))
  modes = [m for m in a.torch_modes.split(",") if m]
  if not set(modes) <= {"no_grad", "ref"}:
    p.error(f"--torch_modes: no_grad and/or ref, got {a.torch_modes!r}")
  flags = {k: v for k, v in vars(a).items() if k not in ("torch", "torch_modes")}
  # One process per PyTorch loop, started before XLA's threads: run in one process, the no_grad
  # loop ran 2x faster after a reference-pattern epoch than before one (glibc's allocator state).
  references = {m: Reference(torch_loops, a, spec) for m in modes} if a.torch else {}
  _epoch.set_devices(a)
  try:
    result: dict[str, Any] = {"bench": "kd-step", **flags, **spec, **bench_jax(a, references),
                              "backend": jax.default_backend()}
  finally:
    for reference in references.values():
      reference.close()
  print(json.dumps(result))
  return 0
