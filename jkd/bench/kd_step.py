"""Benchmark a KD stage's real training step on synthetic data: the lab's SP-KD, or any method.

  python -m jkd.bench kd-step --runs=9 --batch=128 --steps=10 [--cached] [--image_size=64] \
      [--devices=0] [--torch [--torch_modes=no_grad,ref]]
  python -m jkd.bench kd-step --method=kd,dkd,dist,sp,at,rkd,pkt,fitnet --runs=9 --steps=10

Runs are spread over devices as `jkd.main` does (`--devices=0`: one CPU device per run).
`--method=lab` (the default) is configs/pamap_spkd.py's `student_kd` stage: a WRN16-1 student,
signal and GAF teachers, `(1 − λ)·CE + λ·KD + β·SP` over the three stages, built in code
(`jkd.pipeline.base` on PAMAP2's data config, `jkd.pipeline.lab_loss`). Any other name is a term
of `jkd.distill.TERMS` trained as `CE + term` from the signal teacher (`--teachers` changes
that) with the term's authors' defaults; several names (comma-separated) are timed one after
another in this process, each beside plain KD (`kd` is added first when missing), and each line
carries `vs_kd` = its step time / KD's. Everything runs through `jkd.engine.train.make_train_epoch`,
`jkd.distill.make_objective` and `jkd.engine.teachers.make_teacher_outputs` on PAMAP2-shaped random windows (100 x
40, 12 classes) with random teacher variables. By default every teacher runs forward in the step
(the image teacher on GAF images computed in the step); `--cached` feeds outputs precomputed by
`jkd.engine.teachers.make_cache_fn`, as the stage does when no augmentation is active. `--image=pi`
gives the image teacher persistence images (made in the step from the raw windows).

Prints one JSON line per method: `compile_s` (lowering + XLA compile of the R-run epoch of
`steps` steps), `ms_per_step` (one step of every run), `samples_per_s` (all runs together),
`student`, `teachers`, `terms`. `--torch` (lab method only) adds, in a separate process, a
PyTorch eager loop training the R students one after another with the same losses:
`torch.no_grad` = frozen teachers under `no_grad` on precomputed GAF images, `torch.ref` = the
reference's pattern where the teachers' forward keeps its graph and the backward also flows into
them. One epoch of each runs after each of jkd's; `speedup_no_grad` and `speedup_ref` = jax /
torch (ratio of the median epochs), `*_pairs` the ratio in each alternating round.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mc

import jkd.data
import jkd.models
from jkd.bench import Reference, _epoch
from jkd import config as config_lib
from jkd import distill, images, pipeline
from jkd.engine import parallel
from jkd.engine import setup as setup_lib
from jkd.engine import teachers as teachers_lib
from jkd.engine import train as train_lib


def stage_config(a: argparse.Namespace, method: str = "lab", image: str = "gaf") -> mc.ConfigDict:
  """The KD stage's engine config for `method`, with the benchmark's batch and images."""
  c = pipeline.base(jkd.data.default_config("pamap2"))
  kd = c.stages.student_kd
  if method == "lab":
    pipeline.lab_loss(kd.loss, lam=0.99, alpha=0.5, beta=200.0, temperature=4.0)
  else:
    kd.distill.teachers = tuple(a.teachers.split(","))
    kd.loss.terms = ("ce", method) if method not in ("ce", "annealing") else (method,)
    if method == "annealing":
      kd.loss.annealing.tau_max = 1
    if method == "crd":
      kd.loss.crd.nce_k = min(kd.loss.crd.nce_k, a.batch * a.steps // 2)   # the data's size
    if method in ("camkd", "mtkd_rl") and len(kd.distill.teachers) < 2:   # they need several
      pipeline.add_teacher(c, "signal2", c.teachers.signal.model.to_dict())
      kd.distill.teachers = ("signal", "signal2")
  cfg = pipeline.stage_config(c, "student_kd", "/tmp/jkd-bench-kd-step")
  cfg.train.batch_size = a.batch
  cfg.train.init_from = ""
  for name in cfg.distill.teachers:
    if cfg.teachers[name].model.ndim == 2:
      cfg.teachers[name].model.image_size = a.image_size
      cfg.teachers[name].model.image = image
    if a.teacher_conv_impl:
      with cfg.unlocked():
        cfg.teachers[name].model.kwargs.conv_impl = a.teacher_conv_impl
  config_lib.validate(cfg)
  return cfg


def describe(cfg) -> dict[str, Any]:
  loss = cfg.loss
  sp = "sp" in loss.terms
  weights = ([1.0 - loss.alpha, loss.alpha] if loss.alpha >= 0 and len(cfg.distill.teachers) == 2
             else [cfg.teachers[n].weight for n in cfg.distill.teachers])
  return {"student": cfg.model.name,
          "teachers": {n: {"model": cfg.teachers[n].model.name, "ndim": cfg.teachers[n].model.ndim,
                           **({"image_size": cfg.teachers[n].model.image_size}
                              if cfg.teachers[n].model.ndim == 2 else {})}
                       for n in cfg.distill.teachers},
          "terms": list(loss.terms),
          "sp_layers": list(loss.sp.layers) if sp else [],
          "loss": {"lam": loss.kd.weight, "weights": weights,
                   "temperature": loss.kd.temperature, "beta": loss.sp.weight if sp else 0.0,
                   "reduction": loss.kd.reduction}}


def bench_jax(a: argparse.Namespace, references: dict[str, Any] | None = None,
              method: str = "lab", image: str = "gaf") -> dict[str, Any]:
  cfg = stage_config(a, method, image)
  m = parallel.mesh()
  data, inputs = _epoch.synthetic(cfg, a, m)
  model = jkd.models.create(cfg.model.name, num_classes=a.classes, ndim=cfg.model.ndim,
                            **cfg.model.kwargs.to_dict())
  ts = teachers_lib.build(cfg, a.classes)
  needs = distill.teacher_needs(cfg.loss)
  sample = jnp.zeros((2, a.length, a.channels))
  keys = jax.random.split(jax.random.PRNGKey(7), a.runs)
  aux, cache_s, host_vars = [], 0.0, []
  for t in ts:                                 # random teacher variables, one set per run
    tin = images.image_input(t.spec.model, sample, sample)
    variables = jax.device_get(jax.jit(jax.vmap(lambda k: t.model.init(k, tin, train=False)))(keys))
    host_vars.append(variables)
    variables = parallel.shard_runs(variables, m)
    if a.cached:
      t0 = time.perf_counter()
      variables = jax.block_until_ready(teachers_lib.make_cache_fn(
          t, needs, cfg.train.eval_batch_size, m)(variables, data, inputs))
      cache_s += time.perf_counter() - t0
    aux.append(variables)
  n = a.batch * a.steps
  extra, _ = setup_lib._term_init(cfg, model, ts, (a.length, a.channels), n, n,
                                  batch_size=a.batch, batches_per_epoch=a.steps)
  state = parallel.shard_runs(train_lib.init_state(
      model, cfg, inputs.key, jnp.zeros((1, a.length, a.channels)), inputs.hp, None, extra,
      host_vars if extra is not None else None), m)
  inputs = parallel.shard_runs(inputs, m).replace(teachers=aux)
  teacher_outputs = teachers_lib.make_teacher_outputs(ts, [a.cached] * len(ts), needs)
  step = train_lib.Step(model, cfg, distill.make_objective(cfg), a.classes, teacher_outputs)
  epoch_fn = train_lib.make_train_epoch(step, a.steps, mesh=m)
  out = _epoch.time_epochs(epoch_fn, state, (data, inputs, None), a, references)
  terms, epoch_s, ref_s = out.pop("terms"), out.pop("epoch_s"), out.pop("ref_s")
  result = {"method": method, "devices": m.size,
            **({"cache_s": round(cache_s, 2)} if a.cached else {}), **out,
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
  w = loss_cfg["weights"]

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
  p.add_argument("--method", default="lab",
                 help="'lab' (the lab's SP-KD) or terms of jkd.distill.TERMS, comma-separated "
                      f"({', '.join(distill.TERMS)}); each is timed beside plain kd")
  p.add_argument("--teachers", default="signal",
                 help="teachers of a --method term: signal and/or image (comma-separated)")
  p.add_argument("--runs", type=int, default=9)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--length", type=int, default=100)
  p.add_argument("--channels", type=int, default=40)
  p.add_argument("--classes", type=int, default=12)
  p.add_argument("--image_size", type=int, default=64, help="image side of the image teacher")
  p.add_argument("--image", default="gaf",
                 help="the image teacher's images: gaf, pi (persistence images, made in the step) "
                      "or gaf,pi (both, side by side: vs_gaf)")
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
  methods = [m for m in a.method.split(",") if m]
  images = [i for i in a.image.split(",") if i]
  if not images or not set(images) <= {"gaf", "pi"}:
    p.error(f"--image: gaf and/or pi, got {a.image!r}")
  bad = [m for m in methods if m != "lab" and m not in distill.TERMS]
  if bad:
    p.error(f"--method: {bad[0]!r} is not 'lab' nor a term ({', '.join(distill.TERMS)})")
  if methods != ["lab"] and "kd" not in methods:
    methods = ["kd", *methods]
  modes = [m for m in a.torch_modes.split(",") if m]
  if not set(modes) <= {"no_grad", "ref"}:
    p.error(f"--torch_modes: no_grad and/or ref, got {a.torch_modes!r}")
  if a.torch and methods != ["lab"]:
    p.error("--torch compares the lab's SP-KD only; drop --method or --torch")
  flags = {k: v for k, v in vars(a).items() if k not in ("torch", "torch_modes", "method",
                                                        "image")}
  spec = describe(stage_config(a, methods[0], images[0]))
  # One process per PyTorch loop, started before XLA's threads: run in one process, the no_grad
  # loop ran 2x faster after a reference-pattern epoch than before one (glibc's allocator state).
  references = {m: Reference(torch_loops, a, spec) for m in modes} if a.torch else {}
  _epoch.set_devices(a)
  kd_ms, gaf_ms = {}, {}
  try:
    for method in methods:
      for image in images:
        spec = describe(stage_config(a, method, image))
        refs = references if method == "lab" and image == images[0] else None
        result: dict[str, Any] = {"bench": "kd-step", **flags, "image": image, **spec,
                                  **bench_jax(a, refs, method, image),
                                  "backend": jax.default_backend()}
        ms = result["ms_per_step"]
        if method == "kd":
          kd_ms[image] = ms
        if image == "gaf":
          gaf_ms[method] = ms
        if image in kd_ms and method != "lab":
          result["vs_kd"] = round(ms / kd_ms[image], 2)
        if method in gaf_ms and image == "pi":
          result["vs_gaf"] = round(ms / gaf_ms[method], 2)
        print(json.dumps(result), flush=True)
  finally:
    for reference in references.values():
      reference.close()
  return 0
