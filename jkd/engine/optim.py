"""Optimisers and learning-rate schedules, built per run from per-run hyper-parameters.

The learning rate is `optim.lr * lr_factor(epoch)`, computed from the EPOCH index inside every step
(not from a global step count), so a run whose fold has fewer batches per epoch follows the same
epoch schedule. `make(cfg, hp, lr)` takes per-run values (`hp['optim.momentum']`, ...; traced
scalars under vmap, so sweeps share one compile); the state's structure depends only on `cfg`.

SGD and Adam use PyTorch-style COUPLED weight decay: `g + wd * p` enters momentum/moments
(`torch.optim.SGD(..., weight_decay=wd)`); AdamW decays decoupled.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections as mc
import optax

Array = jax.Array

# docs/protocol.md §5: 0.05 -> 0.01 -> 0.001 -> 1e-4, as multiples of optim.lr = 0.05.
LAB_FACTORS = (1.0, 0.2, 0.02, 0.002)


def per_run_keys(cfg: mc.ConfigDict) -> list[str]:
  """The optim.* keys this module reads per run (traced, sweepable), given the static choices that
  decide whether a key is read at all: SGD reads momentum, Adam b1/b2/eps, the step schedules
  gamma. Every other optim key decides the program's structure (the optimiser, the schedule,
  milestones, the fine-tuning split) and cannot be swept."""
  keys = ["lr", "weight_decay", "warmup_epochs"]
  keys += ["momentum"] if cfg.name == "sgd" else ["b1", "b2", "eps"]
  keys += ["gamma"] if cfg.schedule in ("step", "multistep") else []
  return [f"optim.{k}" for k in keys]


def lab_boundaries(epochs: int) -> tuple[int, int, int]:
  """Epochs where the lab's schedule steps down: int(E/18), int(E/3), int(2E/3)."""
  return int(epochs / 18), int(epochs / 3), int(2 * epochs / 3)


def lr_factor(cfg: mc.ConfigDict, epoch: Array | int, epochs: int,
              hp: Mapping[str, Array] | None = None) -> Array:
  """Multiplier of optim.lr during (0-based) `epoch` of `epochs`.

  `hp`: the run's per-run values; `optim.warmup_epochs` and `optim.gamma` are read from it (so
  they can be swept), from `cfg` when it is None. The schedule's shape is static."""
  e = jnp.asarray(epoch, jnp.int32)
  gamma = jnp.float32(cfg.gamma) if hp is None else jnp.asarray(hp["optim.gamma"], jnp.float32)
  warmup = (jnp.float32(cfg.warmup_epochs) if hp is None
            else jnp.asarray(hp["optim.warmup_epochs"], jnp.float32))
  if cfg.schedule == "lab":
    steps = sum((e >= b).astype(jnp.int32) for b in lab_boundaries(epochs))
    factor = jnp.asarray(LAB_FACTORS, jnp.float32)[steps]
  elif cfg.schedule == "constant":
    factor = jnp.float32(1.0)
  elif cfg.schedule == "step":
    factor = gamma ** (e // cfg.step_size).astype(jnp.float32)
  elif cfg.schedule == "multistep":
    n = sum((e >= m).astype(jnp.int32) for m in cfg.milestones) if cfg.milestones else 0
    factor = gamma ** jnp.asarray(n, jnp.float32)
  elif cfg.schedule == "cosine":
    factor = 0.5 * (1.0 + jnp.cos(jnp.pi * e.astype(jnp.float32) / epochs))
  else:
    raise ValueError(f"optim.schedule={cfg.schedule!r} is not one of lab, constant, step, "
                     "multistep, cosine")
  # linear warm-up: (e + 1) / W during the first W epochs (W = 0: none)
  ramp = jnp.minimum(1.0, (e.astype(jnp.float32) + 1.0) / jnp.maximum(warmup, 1e-9))
  return factor * jnp.where(warmup > 0, ramp, 1.0)


def _base(cfg: mc.ConfigDict, hp: Mapping[str, Array], lr: Array) -> optax.GradientTransformation:
  wd = hp["optim.weight_decay"]
  if cfg.name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.sgd(lr, momentum=hp["optim.momentum"], nesterov=cfg.nesterov))
  if cfg.name == "adam":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.adam(lr, b1=hp["optim.b1"], b2=hp["optim.b2"], eps=hp["optim.eps"]))
  if cfg.name == "adamw":
    return optax.adamw(lr, b1=hp["optim.b1"], b2=hp["optim.b2"], eps=hp["optim.eps"],
                       weight_decay=wd)
  raise ValueError(f"optim.name={cfg.name!r} is not one of sgd, adam, adamw")


def head_labels(params, head: str):
  """'head' for top-level parameter groups named `head`, 'backbone' for the rest."""
  return {k: jax.tree.map(lambda _: "head" if k == head else "backbone", v)
          for k, v in params.items()}


def make(cfg: mc.ConfigDict, hp: Mapping[str, Array], lr: Array) -> optax.GradientTransformation:
  """The run's optimiser at learning rate `lr`.

  `optim.backbone_lr_mult` != 1 (a fine-tuning setting) trains the head (`optim.head`) at `lr` and
  the backbone at `lr * backbone_lr_mult`; 0 freezes the backbone.
  """
  tx = _base(cfg, hp, lr)
  if cfg.backbone_lr_mult == 1.0:
    return tx
  if cfg.backbone_lr_mult == 0.0:
    backbone = optax.set_to_zero()
  else:
    backbone = optax.chain(tx, optax.scale(hp["optim.backbone_lr_mult"]))
  return optax.multi_transform({"head": tx, "backbone": backbone},
                               lambda params: head_labels(params, cfg.head))
