"""What a distillation term is: its config keys, which of them are per-run, what it reads, its loss.

A term is one weighted summand of the KD student's objective,

    total = Σ_{term in loss.terms} loss.<term>.weight × term(student, teachers, labels, epoch)

and one module of `jkd.distill` (one `Term` subclass and its math; its `TERM` is found and
registered in `jkd.distill.TERMS` at import), or of a user's package (`jkd.distill.register`).

The contract between a term and the engine, with a complete example: docs/extending.md, "A loss
term". In short: `defaults` are its keys, `per_run` the only sweepable ones (traced scalars in
`hp`; every other key is static), `needs` what it reads of each teacher, `init` its trainable
parts, `loss` its value, `example` a setting in which each per-run key matters, `predict` how a
trained student predicts through its parts (SimKD). Each method's docstring below says more.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections as mc

Array = jax.Array


class TermError(ValueError):
  """A term's config is wrong; the message is one line naming the key and the fix."""


LAST = 0   # in `Needs.stages`: the network's last stage map, whatever its depth


@flax.struct.dataclass
class Outputs:
  """A network's outputs on a batch: logits (B, K), stage maps by 1-based index, pooled embedding."""
  logits: Array
  stages: dict = flax.struct.field(default_factory=dict)   # {1: (B, L, C) or (B, H, W, C), ...}
  embedding: Array | None = None                          # (B, D)

  @classmethod
  def of(cls, logits: Array, features: tuple, stages: tuple[int, ...] | None = None,
         embedding: bool = True) -> "Outputs":
    """From a jkd model's `(logits, (*stage maps, embedding))`; `stages` keeps those (1-based;
    `LAST` is the last one, kept under its own index)."""
    maps = features[:-1]
    keep = range(1, len(maps) + 1) if stages is None else stages
    keep = sorted({len(maps) if i == LAST else i for i in keep})
    return cls(logits, {i: maps[i - 1] for i in keep}, features[-1] if embedding else None)


def last_map(out: Outputs) -> Array:
  """The last stage map of outputs that hold it (a term that needs `LAST` of the teachers; the
  student holds every stage): the highest index kept."""
  return out.stages[max(out.stages)]


@dataclasses.dataclass(frozen=True)
class Needs:
  """What a term reads of each teacher."""
  stages: frozenset = frozenset()   # 1-based stage indices
  embedding: bool = False

  def __or__(self, other: "Needs") -> "Needs":
    return Needs(self.stages | other.stages, self.embedding or other.embedding)


@dataclasses.dataclass(frozen=True)
class Info:
  """What `init` and `predict` may know beyond the output shapes (`jkd.engine.setup` fills it)."""
  num_windows: int = 0          # windows in the dataset `x` (dataset indices are 0..N-1)
  train_windows: int = 0        # training windows of the smallest fold
  teacher_models: tuple = ()    # each teacher's model section (name, ndim, kwargs), stage order
  teachers: tuple = ()          # each teacher's Outputs as shapes (ShapeDtypeStruct leaves)
  teacher_variables: Any = None  # init only: this run's variables of each teacher (a list)
  batch_size: int = 0           # train.batch_size (init sees shape-only outputs of 2 windows)
  batches_per_epoch: int = 0    # training steps of an epoch (the largest fold's)


@flax.struct.dataclass
class Context:
  """What the objective may read beyond the student's outputs and the labels, as the training
  step (`jkd.engine.train.Step`) fills it; `Batch` carries it to the terms. A future method's engine
  input is one field here (a caller outside the step leaves what it lacks as None)."""
  epoch: Array                      # () 0-based, traced
  teachers: Any = ()                # [Outputs] per teacher (the teacher_outputs's), or ()
  distill: Any = None               # the run's {'params', 'batch_stats'} of the terms' parts
  step: Array | None = None         # () the step's index within its epoch, the same in every run
  index: Array | None = None        # (B,) the batch's dataset indices
  key: Array | None = None          # a key of this run and step (not augmentation's or dropout's)
  pool: Array | None = None         # (n_max,) the run's training indices (CRD's negatives)
  pool_count: Array | None = None   # ()
  all_labels: Array | None = None   # (N,) every window's label


@dataclasses.dataclass
class Batch:
  """One run's view of a training batch, as a term's `loss` receives it."""
  student: Outputs
  teachers: list            # [Outputs] in the stage's teacher order
  teacher_weights: Array    # (K,) per-run weights (loss.alpha or teachers.<name>.weight)
  labels: Array             # int (B,), or soft (B, K) under mixup/cutmix
  epoch: Array              # 0-based, traced
  epochs: int = 0           # the stage's train.epochs (static)
  params: Any = None        # this term's trainable variables (from `init`), or None
  batch_stats: Any = None   # its non-trainable variables, or None
  # What the training step knows beyond the batch (None when the caller gives none):
  index: Array | None = None       # (B,) the windows' dataset indices into x
  key: Array | None = None         # a PRNG key of this run and step
  pool: Array | None = None        # (n_max,) the run's training indices into x, padded
  pool_count: Array | None = None  # () how many of `pool` are real
  all_labels: Array | None = None  # (N,) the labels of every window of x
  teacher_models: tuple = ()       # each teacher's model section, as Info.teacher_models
  step: Array | None = None        # () the step's index within its epoch, the same in every run

  def hard_labels(self) -> Array:
    return self.labels if self.labels.ndim == 1 else jnp.argmax(self.labels, -1)


@dataclasses.dataclass(frozen=True)
class Example:
  """A small setting in which every per-run key of a term changes what the objective computes:
  the registry's test (tests/test_distill_registry.py) builds it for every registered term, user
  terms included, moves each key of `jkd.distill.per_run_keys` away from its value and requires
  the objective's output (value, terms, new batch_stats) to change. The harness provides two
  teachers of `ranks` (stage maps 1-3, embedding, logits, classifier variables), the training
  step's context (indices, key, training pool, labels, `step`) and `Info`."""
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # overrides of loss.<name>
  ranks: tuple[int, ...] = (1, 1)   # each teacher's map rank (1: signal, 2: image)
  epoch: int = 1                    # 0-based epoch of the evaluated step (of 3)
  step: int = 1                     # the step's index within the epoch
  # per-run key (as `per_run_keys` names it) -> the value to move it to, where the harness's
  # default (v / 2 + 0.37, or 0.3 for 0) is a fixed point of the term
  others: Mapping[str, float] = dataclasses.field(default_factory=dict)


class Term:
  """Base class: a term without trainable parts that reads only logits. Subclasses override."""
  name: str = ""
  source: str = ""                 # where the formula comes from (authors' code)
  defaults: Mapping[str, Any] = {"weight": 1.0}
  per_run: tuple[str, ...] = ("weight",)
  # Allowed values of numeric keys (`jkd.config.in_range` specs); `weight` is always '>= 0'.
  ranges: Mapping[str, str] = {}
  reads_teachers: bool = True      # False: usable by a model trained alone (ce, focal)

  def config(self) -> mc.ConfigDict:
    return mc.ConfigDict(dict(self.defaults))

  def check(self, cfg: mc.ConfigDict, teachers: list[tuple[str, mc.ConfigDict]],
            student: mc.ConfigDict, epochs: int) -> None:
    """Raise TermError for a bad setting (`teachers`: (name, model section) pairs in the stage's
    order; `student`: its model section)."""

  def needs(self, cfg: mc.ConfigDict) -> Needs:
    """What it reads of every teacher (the student always provides everything)."""
    return Needs()

  def uses_teacher_weights(self, cfg: mc.ConfigDict) -> bool:
    """Whether the loss combines teachers by the per-run teacher weights."""
    return True

  def init(self, cfg: mc.ConfigDict, key: Array, student: Outputs, teachers: list[Outputs],
           info: Info | None = None) -> dict | None:
    """Its parts as Flax variables of ONE run, `{'params': ..., 'batch_stats': ...}`, or None.
    They live per run under `params['distill'][name]` (trained with the student) and
    `batch_stats['distill'][name]` (non-trainable state: memory banks, a copied classifier);
    `info` is passed only to an `init` whose signature takes it."""
    return None

  def predicts(self, cfg: mc.ConfigDict) -> bool:
    """Whether the trained student predicts through this term's parts (`predict`)."""
    return False

  def predict(self, cfg: mc.ConfigDict, term_vars: dict, student: Outputs, info: Info) -> Array:
    """The student's logits at inference from this term's variables `term_vars` ({'params',
    'batch_stats'} of one run) and the student's outputs; only when `predicts(cfg)`."""
    raise NotImplementedError

  def loss(self, cfg: mc.ConfigDict, hp: Mapping[str, Array], batch: Batch
           ) -> Array | tuple[Array, Any]:
    """A pure function of one run's batch (`hp`: its per-run keys, traced): the value, or
    `(value, new_batch_stats)` when it updates its non-trainable state."""
    raise NotImplementedError

  def example(self) -> Example:
    """A setting in which each per-run key changes the objective (`Example`); the default
    (two 1-D teachers, epoch 1, the term's defaults) suits most terms."""
    return Example()


def layers_key(cfg: mc.ConfigDict, key: str, name: str, allowed=(1, 2, 3)) -> tuple[int, ...]:
  """A tuple-of-layers key, checked."""
  value = tuple(cfg[key])
  bad = [v for v in value if v not in allowed]
  if not value or bad:
    raise TermError(f"loss.{name}.{key}={value!r}: choose from {allowed}")
  return value


def same_rank(name: str, teachers: list[tuple[str, mc.ConfigDict]], student: mc.ConfigDict,
              why: str) -> None:
  """Refuse teachers whose maps have another rank than the student's (`why`: what needs it)."""
  bad = [(n, m.ndim) for n, m in teachers if m.ndim != student.ndim]
  if bad:
    raise TermError(f"loss.{name}: teacher {bad[0][0]!r} is {bad[0][1]}-D but the student "
                    f"{student.ndim}-D; {why}; drop {name!r} or that teacher")


def require_teacher_variables(name: str, info: Any, count: int) -> None:
  """`init` of a term that copies teachers' classifiers needs their sections and variables."""
  if info is None or info.teacher_variables is None or len(info.teacher_models) < count:
    raise TermError(f"loss.{name} needs the teachers' model sections and variables at init "
                    "(jkd.distill.Info) to copy their classifiers")
