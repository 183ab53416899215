"""The distillation objective of the `student_kd` stage (REFERENCE §4).

    total = (1 − λ)·H + λ·Σ_t w_t·KD(z_s, z_t) + β·SP + β_at·AT

H is the hard-label term (`loss.name`: 'ce', or 'focal'), KD Hinton's `T²·KL` with `loss.reduction`
('mean' = PyTorch `KLDivLoss()`, the lab's; 'batchmean' = Hinton's formula), SP similarity-
preserving over `loss.sp_layers` with the teachers' Gram matrices merged as `Σ_t w_t G_t` before
normalisation, AT attention transfer over `loss.at_layers` (teachers of the student's rank only: a
2-D image teacher has no 1-D attention map). Teacher weights w: `(1 − α, α)` for two teachers in
`teachers.order` (signal, image: α = `loss.alpha`, the image teacher's weight), 1 for one teacher.
`loss.standardize` applies the lab's logit standardisation (TDA_KD) to CE and KD.

`loss.annealing='jafari'` replaces the KD/CE mix by Annealing-KD (Jafari et al. 2021): for
epochs < `loss.phase1_epochs`, `MSE(z_s, Φ(T)·Σ_t w_t z_t)` with T stepping τ_max → 1; after that
H only. (The lab's "annealing" — initialising from the CE-trained student — is the pipeline's
`kd.init_from_scratch`, not a loss.)

Layers are numbered as the lab counts representations: 1, 2, 3 = the WRN stage outputs, 4 = the
logits ("k = 4 representations").
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections as mc

from jkd import losses

Array = jax.Array
LOGITS_LAYER = 4


def defaults() -> mc.ConfigDict:
  """The `loss` keys the KD stage adds to the engine's (name, label_smoothing, gamma)."""
  return mc.ConfigDict({
      "lam": 0.99,             # λ: weight of the KD term (REFERENCE §4: 0.99 or 0.9)
      "alpha": 0.5,            # α: weight of the image teacher (two teachers)
      "temperature": 4.0,      # T
      "reduction": "mean",     # 'mean' (the lab's KLDivLoss()) or 'batchmean'
      "standardize": False,    # the lab's TDA_KD logit standardisation
      "beta": 0.0,             # β: SP weight (the lab: 200 PAMAP2, 700 GENEActiv)
      "sp_layers": (1, 2, 3),  # 1-3 stage outputs, 4 the logits
      "sp_reduction": "sum",   # 'sum' over layers (REFERENCE §4) or 'mean'
      "at_beta": 0.0,          # AT weight (0: off)
      "at_layers": (1, 2, 3),
      "annealing": "",         # '' or 'jafari' (Annealing-KD)
      "tau_max": 10,
      "phase1_epochs": 0,      # jafari: epochs of phase 1 (0: half of train.epochs)
  })


def needed_layers(loss: mc.ConfigDict) -> tuple[int, ...]:
  """The teacher stage outputs (1-3) the objective reads: what a teacher returns and caches."""
  layers = set()
  if loss.beta:
    layers |= set(loss.sp_layers)
  if loss.at_beta:
    layers |= set(loss.at_layers)
  return tuple(sorted(layers - {LOGITS_LAYER}))


def teacher_weights(alpha: Array, n: int) -> list[Array]:
  if n == 1:
    return [jnp.float32(1.0)]
  if n == 2:
    return [1.0 - alpha, alpha]
  raise ValueError(f"the KD objective takes one or two teachers, got {n}")


def check(loss: mc.ConfigDict, epochs: int) -> None:
  """Raise a one-line ValueError for a bad KD loss setting."""
  if loss.reduction not in ("mean", "batchmean"):
    raise ValueError(f"loss.reduction={loss.reduction!r} is not one of mean, batchmean")
  if loss.sp_reduction not in ("sum", "mean"):
    raise ValueError(f"loss.sp_reduction={loss.sp_reduction!r} is not one of sum, mean")
  if loss.annealing not in ("", "jafari"):
    raise ValueError(f"loss.annealing={loss.annealing!r} is not one of '', 'jafari'")
  for key in ("sp_layers", "at_layers"):
    bad = [v for v in loss[key] if v not in (1, 2, 3, LOGITS_LAYER)]
    if bad:
      raise ValueError(f"loss.{key} {tuple(loss[key])}: layers are 1, 2, 3 (stages) and 4 (logits)")
  if loss.annealing == "jafari":
    losses.annealing_temperature(0, tau_max=loss.tau_max, phase1_epochs=phase1(loss, epochs))


def phase1(loss: mc.ConfigDict, epochs: int) -> int:
  return int(loss.phase1_epochs) or max(epochs // 2, 1)


def _pick(features: Sequence[Array], logits: Array, layers: Sequence[int],
          available: Sequence[int]) -> list[Array]:
  """Maps of `layers` from `features` holding the stage outputs `available` (1-based)."""
  out = []
  for layer in layers:
    out.append(logits if layer == LOGITS_LAYER else features[list(available).index(layer)])
  return out


def make(config: mc.ConfigDict):
  """`objective(logits, features, labels, hp, context) -> (total, terms)` for the student_kd stage.

  `context['teachers']`: one `(logits, features)` per teacher, `features` holding the stage
  outputs `needed_layers(config.loss)` (what `jkd.teachers` returns); `context['epoch']` the
  0-based epoch (Annealing-KD). The student's `features` are all its stage outputs.
  """
  loss = config.loss
  check(loss, config.train.epochs)
  layers = needed_layers(loss)
  p1 = phase1(loss, config.train.epochs)

  def objective(logits: Array, features: tuple, labels: Array, hp: Mapping[str, Array],
                context: Mapping) -> tuple[Array, dict[str, Array]]:
    teachers = context["teachers"]
    t_logits = [t[0] for t in teachers]
    w = teacher_weights(hp["loss.alpha"], len(teachers))
    if loss.name == "focal":
      hard = losses.focal_loss(logits, labels, gamma=hp["loss.gamma"])
    else:
      hard = losses.cross_entropy(logits, labels, label_smoothing=hp["loss.label_smoothing"],
                                  standardize=loss.standardize)
    terms = {"ce": hard}
    if loss.annealing == "jafari":
      epoch = context["epoch"]
      phi = losses.annealing_phi(epoch, tau_max=loss.tau_max, phase1_epochs=p1)
      target = sum(wt * z for wt, z in zip(w, t_logits))
      mse = losses.annealing_kd_loss(logits, target, phi)
      total = jnp.where(epoch < p1, mse, hard)
      terms["annealing_mse"] = mse
    else:
      kd, per = losses.multi_teacher_kd(logits, t_logits, w, temperature=hp["loss.temperature"],
                                        reduction=loss.reduction, standardize=loss.standardize)
      lam = hp["loss.lam"]
      total = (1.0 - lam) * hard + lam * kd
      terms["kd"] = kd
      for i, name in enumerate(config.teachers.order):
        terms[f"kd_{name}"] = per[i]
    if loss.beta:
      student = _pick(features, logits, loss.sp_layers, (1, 2, 3))
      teach = [_pick(f, z, loss.sp_layers, layers) for z, f in teachers]
      sp = losses.sp_loss(student, teach, teacher_weights=w, beta=1.0,
                          layer_reduction=loss.sp_reduction)
      total = total + hp["loss.beta"] * sp
      terms["sp"] = sp
    if loss.at_beta:
      student = _pick(features, logits, loss.at_layers, (1, 2, 3))
      at = 0.0
      for wt, (z, f) in zip(w, teachers):
        teach = _pick(f, z, loss.at_layers, layers)
        if all(t.ndim == s.ndim for t, s in zip(teach, student)):
          at = at + wt * losses.at_loss(student, teach)
      total = total + hp["loss.at_beta"] * at
      terms["at"] = jnp.asarray(at, jnp.float32)
    return total, terms

  return objective
