"""Distillation methods as a registry of loss terms: the KD student's objective is

    total = Σ_{t in loss.terms} loss.<t>.weight × t(student, teachers, labels, epoch)

A term is on because `loss.terms` lists it, never because a weight is non-zero. Each term is one
module here (`jkd.distill.term.Term`, its math inside): its keys and defaults, which keys are
per-run (traced, sweepable; every other key is static and a sweep over it is refused), what it
reads of the teachers, its trainable parts, its pure loss. The modules are found at import
(`_discover`); a user's own module adds a term with `register`. `docs/extending.md` says how.

Teachers have per-run weights w (K,): `teachers.<name>.weight`, or, with two teachers and
`loss.alpha` >= 0, (1 − α, α) (α = the second teacher's weight, the lab's dual-teacher α).
Terms that combine teachers use w (KD `weighting` may override it per sample: AVER, EBKD, CA-MKD).
"""

from __future__ import annotations

import dataclasses
import importlib
import keyword
import pkgutil
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections as mc

from jkd.distill.term import (LAST, Batch, Context, Example, Info, Needs, Outputs, Term,
                               TermError)

# The registry: name -> term. The built-in terms (every module of this package that defines
# `TERM`) are found at import; a user's own module adds its terms with `register`.
TERMS: dict[str, Term] = {}
HARD = ("ce", "focal")
# Keys of a stage's `loss` section that are not terms.
RESERVED = ("terms", "alpha")
# The built-ins' order in `loss_defaults` (so configs and checkpoints written before discovery
# keep their key order); a built-in not named here follows alphabetically, user terms after.
BUILTIN_ORDER = ("ce", "focal", "kd", "dkd", "dist", "sp", "at", "fitnet", "rkd", "pkt",
                 "annealing", "crd", "simkd", "srrl", "camkd", "pefd", "dcd", "projector",
                 "mtkd_rl")
__all__ = ["TERMS", "Batch", "Context", "Example", "Info", "LAST", "Needs", "Outputs", "Term", "TermError",
           "register", "loss_defaults", "check", "per_run_keys", "ranges", "teacher_needs",
           "init", "make_objective", "make_predict", "teacher_weights"]


def register(term: Term) -> Term:
  """Add `term` (a `Term` instance) to `TERMS` and return it: a user's module outside jkd calls
  `register(XYZ())` at import, and from then on `loss.terms` may list it, `loss_defaults` has
  its section, and checks, sweeps and the objective treat it as a built-in. Refuses (one-line
  TermError) a name that is not an identifier, a reserved key of the loss section, a name
  already registered, and `defaults`/`per_run` without `weight` or with per-run keys that have
  no default."""
  if not isinstance(term, Term):
    raise TermError(f"register: {term!r} is not a jkd.distill.Term instance; pass XYZ(), not XYZ")
  name = term.name
  if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
    raise TermError(f"register: term name {name!r} is not a Python identifier; name it like "
                    "'xyz' (it is the loss.<name> config section)")
  if name in RESERVED:
    raise TermError(f"register: term name {name!r} is a key of the loss section; choose another")
  if name in TERMS:
    raise TermError(f"register: a term named {name!r} is already registered "
                    f"({type(TERMS[name]).__module__}); choose another name")
  missing = [k for k in ("weight", *term.per_run) if k not in term.defaults]
  if missing or "weight" not in term.per_run:
    raise TermError(f"register: term {name!r} needs 'weight' in its defaults and per_run, and a "
                    f"default for every per-run key; missing {(missing or ['weight'])[0]!r}")
  TERMS[name] = term
  return term


def _discover() -> None:
  """Register every `TERM` of this package's modules, in `BUILTIN_ORDER`."""
  found = []
  for info in pkgutil.iter_modules(__path__):
    term = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TERM", None)
    if isinstance(term, Term):
      found.append(term)
  rank = {n: i for i, n in enumerate(BUILTIN_ORDER)}
  for term in sorted(found, key=lambda t: (rank.get(t.name, len(rank)), t.name)):
    if TERMS.get(term.name) is term:    # it registered itself at import: re-inserted in order
      del TERMS[term.name]
    register(term)


def loss_defaults(terms: tuple[str, ...] = ("ce", "kd")) -> mc.ConfigDict:
  """A KD stage's `loss` section: the listed terms, α, and every term's section at its defaults
  (so any term can be switched on by an override of `loss.terms`)."""
  c = mc.ConfigDict({"terms": tuple(terms), "alpha": -1.0})
  for name, term in TERMS.items():
    c[name] = term.config()
  return c


def _changed(section: mc.ConfigDict, term: Term) -> list[str]:
  d = dict(term.defaults)
  return [k for k, v in section.items() if k in d and _norm(v) != _norm(d[k])]


def _norm(v):
  return tuple(v) if isinstance(v, (list, tuple)) else v


def check(loss: mc.ConfigDict, teachers: list[tuple[str, mc.ConfigDict]], student: mc.ConfigDict,
          epochs: int, distilling: bool = True) -> None:
  """Raise TermError (one line) for a bad loss section of a stage with these teachers
  (`distilling`: a distillation stage, which needs teachers; else only terms that read none)."""
  terms = tuple(loss.terms)
  unknown = [t for t in terms if t not in TERMS]
  if unknown:
    raise TermError(f"loss.terms: {unknown[0]!r} is not a distillation term; terms are "
                    f"{', '.join(TERMS)}")
  if not terms or len(set(terms)) < len(terms):
    raise TermError(f"loss.terms={terms!r}: list each term once, at least one")
  if distilling and not teachers:
    raise TermError("the KD stage names no teachers; set its distill.teachers")
  needy = [t for t in terms if TERMS[t].reads_teachers]
  if not teachers and needy:
    raise TermError(f"loss.terms: {needy[0]!r} reads teachers but this model trains alone; list "
                    "it in a distillation stage (one with teachers), or keep loss.terms to terms "
                    "that read none, e.g. ('ce',) or ('focal',)")
  for name, term in TERMS.items():
    if name not in terms and name in loss and _changed(loss[name], term):
      key = _changed(loss[name], term)[0]
      raise TermError(f"loss.{name}.{key} is set but {name!r} is not in loss.terms, so it would "
                      f"change nothing; add {name!r} to loss.terms or drop the setting")
  if "annealing" in terms and set(terms) & set(HARD):
    raise TermError("loss.terms: 'annealing' includes its own cross-entropy phase; do not list "
                    "'ce' or 'focal' with it")
  if loss.alpha >= 0 and len(teachers) != 2:
    raise TermError(f"loss.alpha={loss.alpha} weighs two teachers (1 − α, α) but the stage has "
                    f"{len(teachers)}; set teachers.<name>.weight instead (loss.alpha=-1)")
  predictors = [n for n in terms if TERMS[n].predicts(loss[n])]
  if len(predictors) > 1:
    raise TermError(f"loss.terms: {predictors[0]!r} and {predictors[1]!r} both decide how the "
                    "student predicts; list one of them")
  for name in terms:
    TERMS[name].check(loss[name], teachers, student, epochs)


def per_run_keys(loss: mc.ConfigDict, teacher_names: tuple[str, ...]) -> list[str]:
  """Dotted config keys the KD step reads per run and that change what it computes: the only
  ones a sweep may change. The teacher weights are (1 − α, α) when two teachers have
  `loss.alpha` >= 0 (then α is per-run and the weights are not), else `teachers.<name>.weight`;
  either only when a listed term combines teachers by them."""
  keys = []
  known = [n for n in loss.terms if n in TERMS]   # `check` names an unknown one
  if any(TERMS[n].uses_teacher_weights(loss[n]) for n in known):
    if len(teacher_names) == 2 and loss.alpha >= 0:
      keys.append("loss.alpha")
    else:
      keys += [f"teachers.{n}.weight" for n in teacher_names]
  for name in known:
    keys += [f"loss.{name}.{k}" for k in TERMS[name].per_run]
  return keys


def ranges(loss: mc.ConfigDict, teacher_names: tuple[str, ...]) -> dict[str, str]:
  """Allowed values of the KD stage's numeric keys (checked with their swept values too)."""
  out = {f"teachers.{n}.weight": ">= 0" for n in teacher_names}
  for name in (n for n in loss.terms if n in TERMS):
    out |= {f"loss.{name}.{k}": v for k, v in {"weight": ">= 0", **TERMS[name].ranges}.items()}
  return out


def teacher_needs(loss: mc.ConfigDict) -> Needs:
  out = Needs()
  for name in loss.terms:
    out = out | TERMS[name].needs(loss[name])
  return out


def init(loss: mc.ConfigDict, key: jax.Array, student: Outputs, teachers: list[Outputs],
         info: Info | None = None) -> dict | None:
  """One run's trainable parts of every listed term, `{'params': {term: ...}, 'batch_stats':
  {term: ...}}`, or None when no term has any; `info`: what the terms may need beyond shapes."""
  params, stats = {}, {}
  for i, name in enumerate(loss.terms):
    term, k = TERMS[name], jax.random.fold_in(key, i)
    v = term.init(loss[name], k, student, teachers, info=info or Info())
    if v is not None:
      params[name], stats[name] = v.get("params", {}), v.get("batch_stats", {})
  return {"params": params, "batch_stats": stats} if params or stats else None


def teacher_weights(hp: dict, teacher_names: tuple[str, ...]) -> jax.Array:
  """(K,) per-run teacher weights: (1 − α, α) when `hp` carries α (`per_run_keys`), else each
  teacher's weight (1 when no listed term reads them); (0,) without teachers."""
  if not teacher_names:
    return jnp.zeros((0,), jnp.float32)
  if "loss.alpha" in hp:
    a = jnp.asarray(hp["loss.alpha"], jnp.float32)
    return jnp.stack([1.0 - a, a])
  return jnp.stack([jnp.asarray(hp.get(f"teachers.{n}.weight", 1.0), jnp.float32)
                    for n in teacher_names])


def make_objective(config: mc.ConfigDict) -> Callable:
  """`objective(logits, features, labels, hp, context) -> (total, terms, terms' batch_stats)`, the
  objective of every stage: Σ weight × term over `loss.terms`.

  `context` (`jkd.engine.train.Context`) is what the training step knows beyond the batch: the epoch and
  the step's index in it, the batch's dataset indices, a key of the run and step, the run's
  training indices and every label, the teachers' `Outputs` (`distill.teachers` order; none
  outside a distillation stage) and the run's trainable parts of the terms (`distill`); `Batch`
  carries them to the terms."""
  loss = config.loss
  names = tuple(config.distill.teachers) if "distill" in config else ()
  listed = [(n, TERMS[n], loss[n]) for n in loss.terms]
  epochs = int(config.train.epochs)
  models = _teacher_models(config)
  swept = {k.removeprefix("zip.") for k in _leaf_keys(config.get("sweep", None) or {})}
  # One listed term at weight 1 that no sweep changes is the loss itself: it is not multiplied
  # by a traced 1.0 (the same number, but XLA would fuse and round the step differently).
  alone = (len(listed) == 1 and float(listed[0][2].weight) == 1.0
           and f"loss.{listed[0][0]}.weight" not in swept)

  def objective(logits, features, labels, hp, context):
    student = Outputs.of(logits, features)
    term_vars = context.distill or {"params": {}, "batch_stats": {}}
    batch = Batch(student, list(context.teachers), teacher_weights(hp, names), labels,
                  context.epoch, epochs, index=context.index, key=context.key,
                  pool=context.pool, pool_count=context.pool_count,
                  all_labels=context.all_labels, teacher_models=models, step=context.step)
    total, terms, stats = jnp.float32(0.0), {}, {}
    for name, term, cfg in listed:
      thp = {k: hp[f"loss.{name}.{k}"] for k in term.per_run}
      b = dataclasses.replace(batch, params=term_vars["params"].get(name),
                              batch_stats=term_vars["batch_stats"].get(name))
      out = term.loss(cfg, thp, b)
      value, new = out if isinstance(out, tuple) else (out, None)
      if new is not None:
        stats[name] = new
      value = jnp.asarray(value, jnp.float32)
      terms[name] = value
      total = value if alone else total + thp["weight"] * value
    return total, terms, stats

  return objective


def _leaf_keys(tree, prefix: str = ""):
  """The dotted keys of a nested mapping's leaves (a config's `sweep`)."""
  for k, v in tree.items():
    if hasattr(v, "items") and v:
      yield from _leaf_keys(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


def _teacher_models(config: mc.ConfigDict) -> tuple:
  """Each teacher's model section (None where the config has none), `distill.teachers` order."""
  ts = config.get("teachers", None) or {}
  names = config.distill.teachers if "distill" in config else ()
  return tuple(ts[n].get("model", None) if n in ts else None for n in names)


def make_predict(config: mc.ConfigDict, info: Info) -> Callable | None:
  """`predict(term_vars, logits, features) -> logits` of the listed term that decides how the
  trained student predicts (SimKD), from the run's term variables `term_vars` (`{'params': {term:
  ...}, 'batch_stats': {term: ...}}`, i.e. `params['distill']` and `batch_stats['distill']`) and
  the student's outputs; None when no listed term does (the student's own logits)."""
  loss = config.loss
  found = [(n, TERMS[n]) for n in loss.terms if TERMS[n].predicts(loss[n])]
  if not found:
    return None
  (name, term), = found

  def predict(term_vars, logits, features):
    mine = {"params": term_vars["params"][name], "batch_stats": term_vars["batch_stats"][name]}
    return term.predict(loss[name], mine, Outputs.of(logits, features), info)

  return predict


_discover()
