"""Every loss a KD train step uses (REFERENCE.md §4), each a small pure function of jnp arrays.

All functions are jittable and vmappable (hyper-parameters such as ``temperature``, ``lam``, ``alpha``
or ``phi`` may be traced per-run values) and take an optional per-example ``mask`` of shape ``(B,)``
(0/1 or non-negative weights). Per-example losses are averaged as ``sum(mask * l) / sum(mask)``
(0 when the mask is all zero), so padded examples have no influence. Teacher inputs always pass
through ``jax.lax.stop_gradient``.

Conventions follow PyTorch where the lab's code relies on it:

* ``torch.std`` is unbiased (``ddof=1``): :func:`standardize_logits` uses it by default.
* ``nn.KLDivLoss()`` defaults to ``reduction='mean'`` (average over batch *and* classes):
  ``kd_loss(..., reduction='mean')``; ``'batchmean'`` (the default here) is Hinton's formula.
* ``F.normalize`` divides by ``max(norm, 1e-12)``; ``F.mse_loss`` averages all elements.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# F.normalize's default eps (row-wise L2 normalisation in SP and AT).
NORMALIZE_EPS = 1e-12
# The lab's TDA_KD code divides logits by std(z) in CE and multiplies by 2 / std(z) in its KD terms.
CE_STD_SCALE = 1.0
KD_STD_SCALE = 2.0
_REDUCTIONS = ("batchmean", "mean")


# --------------------------------------------------------------------------------------------------
# Helpers


def masked_mean(values: Array, mask: Array | None = None) -> Array:
  """Mean of per-example `values` (B,), weighted by `mask` (B,); 0 when the mask sums to 0."""
  if mask is None:
    return jnp.mean(values)
  mask = _check_mask(mask, values.shape[0])
  total = jnp.sum(mask)
  return jnp.sum(mask * values) / jnp.where(total > 0, total, 1.0)


def _check_mask(mask: Array, batch: int) -> Array:
  mask = jnp.asarray(mask)
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape (batch,) = ({batch},), got {mask.shape}; pass one "
                     "weight per example (1 = real, 0 = padding).")
  return mask.astype(jnp.float32)


def _check_logits(student: Array, teacher: Array) -> None:
  if student.shape != teacher.shape:
    raise ValueError(f"student logits {student.shape} and teacher logits {teacher.shape} must have "
                     "the same shape (batch, classes); check both models use the same num_classes.")


def _l2_normalize(x: Array, axis: int = -1) -> Array:
  """`F.normalize(x, p=2, dim=axis)`: x / max(||x||, 1e-12)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)


# --------------------------------------------------------------------------------------------------
# Classification losses


def standardize_logits(z: Array, *, scale: float = 1.0, eps: float = 1e-7, ddof: int = 1) -> Array:
  """``scale * z / (std(z) + eps)`` over the class axis (last), as in the lab's TDA_KD code.

  The mean is NOT subtracted (the lab divides by ``torch.std`` only); under a softmax this makes no
  difference, since softmax is shift-invariant. ``ddof=1`` matches ``torch.std``'s unbiased default.
  """
  std = jnp.std(z, axis=-1, ddof=ddof, keepdims=True)
  return scale * z / (std + eps)


def _targets(labels: Array, num_classes: int, label_smoothing: float | Array) -> Array:
  """Integer (B,) or soft (B, K) labels -> (B, K) target distribution, PyTorch-style smoothing."""
  if labels.ndim == 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"1-D labels must be integer class indices, got dtype {labels.dtype}; pass soft "
                       "labels as a (batch, classes) array.")
    targets = jax.nn.one_hot(labels, num_classes)
  elif labels.ndim == 2 and labels.shape[-1] == num_classes:
    targets = labels.astype(jnp.float32)
  else:
    raise ValueError(f"labels must be int (batch,) or soft (batch, {num_classes}), got shape "
                     f"{labels.shape}.")
  return targets * (1.0 - label_smoothing) + label_smoothing / num_classes


def cross_entropy(logits: Array, labels: Array, *, mask: Array | None = None,
                  label_smoothing: float | Array = 0.0, standardize: bool = False,
                  std_scale: float = CE_STD_SCALE) -> Array:
  """Mean softmax cross-entropy; `labels` int (B,) or soft (B, K) (e.g. mixup targets).

  ``label_smoothing`` ε mixes the target with the uniform distribution, ``(1 - ε) y + ε / K``
  (``torch.nn.CrossEntropyLoss(label_smoothing=ε)``). ``standardize`` applies
  :func:`standardize_logits` first (the lab's TDA_KD CE: ``z / std(z)``).
  """
  if standardize:
    logits = standardize_logits(logits, scale=std_scale)
  targets = _targets(labels, logits.shape[-1], label_smoothing)
  per_example = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  return masked_mean(per_example, mask)


def focal_loss(logits: Array, labels: Array, *, gamma: float | Array = 2.0,
               alpha: Array | Sequence[float] | None = None, mask: Array | None = None) -> Array:
  """Focal loss ``-α_y (1 - p_y)^γ log p_y`` averaged over examples (Lin et al. 2017).

  `alpha`: optional per-class weights (K,). Soft labels (B, K) give ``-Σ_k y_k α_k (1-p_k)^γ log p_k``.
  The average is a plain (masked) mean, not normalised by the α weights.
  """
  num_classes = logits.shape[-1]
  targets = _targets(labels, num_classes, 0.0)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  weight = (1.0 - jnp.exp(log_p)) ** gamma
  if alpha is not None:
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha.shape != (num_classes,):
      raise ValueError(f"focal_loss alpha must hold one weight per class ({num_classes},), got "
                       f"shape {alpha.shape}.")
    weight = weight * alpha
  per_example = -jnp.sum(targets * weight * log_p, axis=-1)
  return masked_mean(per_example, mask)


# --------------------------------------------------------------------------------------------------
# Logit distillation


def kd_loss(student_logits: Array, teacher_logits: Array, *, temperature: float | Array = 4.0,
            reduction: str = "batchmean", standardize: bool = False,
            std_scale: float = KD_STD_SCALE, mask: Array | None = None) -> Array:
  """Hinton KD, ``T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))`` averaged over examples.

  ``reduction='batchmean'``: sum over classes, mean over examples. ``'mean'``: additionally divided
  by the number of classes K, i.e. PyTorch's ``nn.KLDivLoss()`` default, which the lab's
  hyper-parameters (λ, β) assume. No gradient flows into `teacher_logits`.

  ``standardize=True`` reproduces the lab's TDA_KD term
  ``T*T*KLDivLoss()(log_softmax(2 z_s/σ_s), softmax(2 z_t/σ_t))``: each side's softmax input is
  ``std_scale * z / std(z)`` (:func:`standardize_logits`) INSTEAD of ``z / T`` — `std_scale` plays the
  role of 1/T — while the ``T²`` factor is kept.
  """
  if reduction not in _REDUCTIONS:
    raise ValueError(f"kd_loss reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
  _check_logits(student_logits, teacher_logits)
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if standardize:
    zs = standardize_logits(student_logits, scale=std_scale)
    zt = standardize_logits(teacher_logits, scale=std_scale)
  else:
    zs, zt = student_logits / temperature, teacher_logits / temperature
  log_ps = jax.nn.log_softmax(zs, axis=-1)
  log_pt = jax.nn.log_softmax(zt, axis=-1)
  per_example = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  if reduction == "mean":
    per_example = per_example / student_logits.shape[-1]
  return temperature ** 2 * masked_mean(per_example, mask)


def multi_teacher_kd(student_logits: Array, teacher_logits: Sequence[Array],
                     weights: Sequence[float | Array] | Array, **kd_kwargs) -> tuple[Array, Array]:
  """``Σ_i w_i · kd_loss(z_s, z_ti)``; returns ``(total, per_teacher)`` with per_teacher (n,).

  `kd_kwargs` go to :func:`kd_loss` (temperature, reduction, standardize, std_scale, mask).
  Weights are used as given (not renormalised).
  """
  if len(teacher_logits) == 0:
    raise ValueError("multi_teacher_kd needs at least one teacher's logits.")
  if len(teacher_logits) != len(weights):
    raise ValueError(f"got {len(teacher_logits)} teacher logits but {len(weights)} weights; pass "
                     "one weight per teacher.")
  terms = jnp.stack([kd_loss(student_logits, t, **kd_kwargs) for t in teacher_logits])
  total = jnp.sum(jnp.stack([jnp.asarray(w, jnp.float32) for w in weights]) * terms)
  return total, terms


def distillation_loss(student_logits: Array, labels: Array, teacher_logits: Sequence[Array],
                      weights: Sequence[float | Array] | Array, *, lam: float | Array,
                      temperature: float | Array = 4.0, reduction: str = "batchmean",
                      standardize: bool = False, ce_std_scale: float = CE_STD_SCALE,
                      kd_std_scale: float = KD_STD_SCALE, label_smoothing: float | Array = 0.0,
                      mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """``(1 - λ) CE + λ Σ_i w_i KD(z_s, z_ti)`` for any number of teachers.

  Returns ``(total, {'ce', 'kd', 'kd_teachers'})``: 'kd' is the weighted KD sum (before λ),
  'kd_teachers' the per-teacher KD terms (n,). ``standardize`` applies the lab's logit
  standardisation to both CE (``ce_std_scale``) and KD (``kd_std_scale``).
  """
  ce = cross_entropy(student_logits, labels, mask=mask, label_smoothing=label_smoothing,
                     standardize=standardize, std_scale=ce_std_scale)
  kd, terms = multi_teacher_kd(student_logits, teacher_logits, weights, temperature=temperature,
                               reduction=reduction, standardize=standardize,
                               std_scale=kd_std_scale, mask=mask)
  total = (1.0 - lam) * ce + lam * kd
  return total, {"ce": ce, "kd": kd, "kd_teachers": terms}


def dual_teacher_loss(student_logits: Array, labels: Array, sig_logits: Array, img_logits: Array,
                      *, lam: float | Array, alpha: float | Array, temperature: float | Array = 4.0,
                      **kwargs) -> tuple[Array, dict[str, Array]]:
  """``(1 - λ) CE + λ [(1 - α) KD(z_s, z_sig) + α KD(z_s, z_img)]`` (α = image-teacher weight).

  `kwargs` as in :func:`distillation_loss`. Returns ``(total, {'ce', 'kd', 'kd_sig', 'kd_img'})``.
  """
  total, terms = distillation_loss(student_logits, labels, [sig_logits, img_logits],
                                   [1.0 - alpha, alpha], lam=lam, temperature=temperature, **kwargs)
  kd_terms = terms.pop("kd_teachers")
  return total, {**terms, "kd_sig": kd_terms[0], "kd_img": kd_terms[1]}


# --------------------------------------------------------------------------------------------------
# Annealing-KD (Jafari et al., EACL 2021)


def annealing_temperature(epoch: int | Array, *, tau_max: int = 10, phase1_epochs: int) -> Array:
  """The phase-1 temperature T at `epoch` (0-based): ``τ_max - ⌊epoch · τ_max / phase1_epochs⌋``.

  Phase 1 is split into τ_max equal blocks of epochs (block j uses T = τ_max - j), so T steps
  τ_max, τ_max - 1, ..., 1 and the last phase-1 epoch always has T = 1. From ``phase1_epochs`` on
  (phase 2) T stays 1. E.g. τ_max 10 over 20 epochs: epochs 0-1 T=10, 2-3 T=9, ..., 18-19 T=1.
  """
  if tau_max < 1:
    raise ValueError(f"annealing tau_max must be >= 1, got {tau_max}.")
  if phase1_epochs < tau_max:
    raise ValueError(f"annealing phase1_epochs ({phase1_epochs}) must be >= tau_max ({tau_max}) so "
                     "every temperature gets at least one epoch; raise phase1_epochs or lower tau_max.")
  epoch = jnp.minimum(jnp.asarray(epoch, jnp.int32), phase1_epochs - 1)
  return tau_max - (epoch * tau_max) // phase1_epochs


def annealing_phi(epoch: int | Array, *, tau_max: int = 10, phase1_epochs: int) -> Array:
  """``Φ(T) = 1 - (T - 1) / τ_max`` with T from :func:`annealing_temperature`: 1/τ_max ... 1."""
  temperature = annealing_temperature(epoch, tau_max=tau_max, phase1_epochs=phase1_epochs)
  return 1.0 - (temperature - 1).astype(jnp.float32) / tau_max


def annealing_kd_loss(student_logits: Array, teacher_logits: Array, phi: float | Array, *,
                      mask: Array | None = None) -> Array:
  """Annealing-KD phase 1: ``MSE(z_s, Φ · z_t)``, mean over classes and (masked) examples."""
  _check_logits(student_logits, teacher_logits)
  target = phi * jax.lax.stop_gradient(teacher_logits)
  per_example = jnp.mean((student_logits - target) ** 2, axis=-1)
  return masked_mean(per_example, mask)


# --------------------------------------------------------------------------------------------------
# Similarity-preserving KD (Tung & Mori, ICCV 2019)


def gram(features: Array, *, normalize: bool = True, mask: Array | None = None) -> Array:
  """Batch similarity ``G = Q Qᵀ`` of `features` (b, ...) flattened to Q (b, D); (b, b).

  ``normalize`` L2-normalises each row (``F.normalize(G, dim=1)``). With `mask`, rows and columns of
  masked-out examples (mask 0) are zero, so real rows are normalised over real columns only.
  The product runs at full float32 precision (no TF32/bf16 passes on accelerators, like PyTorch).
  """
  q = features.reshape(features.shape[0], -1).astype(jnp.float32)
  g = jnp.matmul(q, q.T, precision=jax.lax.Precision.HIGHEST)
  if mask is not None:       # on G, not on Q: the same zeros without a pass over the features
    keep = _check_mask(mask, q.shape[0]) > 0
    g = jnp.where(keep[:, None] & keep[None, :], g, 0.0)
  return _l2_normalize(g) if normalize else g


def _as_list(feats: Array | Sequence[Array]) -> list[Array]:
  """One map (anything with a shape) or a sequence of maps -> a list of maps."""
  return [feats] if hasattr(feats, "shape") else list(feats)


def sp_loss(student_feats: Array | Sequence[Array],
            teacher_feats: Array | Sequence[Array] | Sequence[Sequence[Array]], *,
            teacher_weights: Sequence[float | Array] | Array | None = None, beta: float | Array = 1.0,
            layer_reduction: str = "sum", mask: Array | None = None) -> Array:
  """Similarity-preserving loss ``β · Σ_layers ‖G_s − G_t‖_F² / b²``.

  `student_feats`: one map per chosen layer, e.g. the WRN stage outputs (b, L, C) or (b, H, W, C),
  optionally the logits as a further "layer". Student and teacher maps of a layer may differ in every
  axis but the batch. `teacher_feats`: the same list for one teacher; with `teacher_weights`
  (w_1..w_n) it is a list of such lists, one per teacher, merged per layer as
  ``G_t = Σ_i w_i G_ti`` BEFORE row normalisation (the lab's TGD: ``α G_t1 + (1 − α) G_t2``).
  ``layer_reduction='mean'`` divides the layer sum by the number of layers (TGD's ``/3``).

  With `mask`, masked-out examples are dropped from both Gram matrices and b is the number of real
  examples; weights act as ``w_i w_j`` on entry (i, j) and b² becomes ``(Σ w)²``.
  """
  if layer_reduction not in ("sum", "mean"):
    raise ValueError(f"sp_loss layer_reduction must be 'sum' or 'mean', got {layer_reduction!r}.")
  student_feats = _as_list(student_feats)
  if teacher_weights is None:
    teachers, weights = [_as_list(teacher_feats)], [1.0]
  else:
    teachers, weights = [_as_list(t) for t in teacher_feats], list(teacher_weights)
    if len(teachers) != len(weights):
      raise ValueError(f"sp_loss got {len(teachers)} teachers' feature lists but {len(weights)} "
                       "teacher_weights; pass one weight per teacher.")
  for i, t in enumerate(teachers):
    if len(t) != len(student_feats):
      raise ValueError(f"sp_loss: teacher {i} gives {len(t)} feature maps but the student "
                       f"{len(student_feats)}; pass the same chosen layers for both.")
  batch = student_feats[0].shape[0]
  w = jnp.ones((batch,), jnp.float32) if mask is None else _check_mask(mask, batch)
  pair_weight = w[:, None] * w[None, :]
  denom = jnp.sum(w) ** 2
  total = 0.0
  for layer, fs in enumerate(student_feats):
    g_t = sum(jnp.asarray(wt, jnp.float32) * gram(jax.lax.stop_gradient(t[layer]), normalize=False,
                                                  mask=mask)
              for wt, t in zip(weights, teachers))
    diff = gram(fs, mask=mask) - _l2_normalize(g_t)
    total = total + jnp.sum(pair_weight * diff * diff)
  total = total / jnp.where(denom > 0, denom, 1.0)
  if layer_reduction == "mean":
    total = total / len(student_feats)
  return beta * total


# --------------------------------------------------------------------------------------------------
# Attention transfer (Zagoruyko & Komodakis, ICLR 2017)


def _energy(features: Array) -> Array:
  """mean_c(F²) of (b, *spatial, C) -> (b, *spatial)."""
  return jnp.mean(features.astype(jnp.float32) ** 2, axis=-1)


def _resample(energy: Array, spatial: tuple[int, ...]) -> Array:
  """Resize a (b, *spatial') map: average-pool when every axis shrinks by an integer factor, else
  linear interpolation with half-pixel centres and clamped edges (jax.image.resize 'linear')."""
  src = energy.shape[1:]
  if src == spatial:
    return energy
  if all(s % d == 0 for s, d in zip(src, spatial)):
    shape = [energy.shape[0]]
    for d, s in zip(spatial, src):
      shape += [d, s // d]
    return jnp.mean(energy.reshape(shape), axis=tuple(range(2, 2 * len(spatial) + 1, 2)))
  return jax.image.resize(energy, (energy.shape[0], *spatial), method="linear", antialias=False)


def at_map(features: Array, spatial: tuple[int, ...] | None = None) -> Array:
  """Attention map of (b, *spatial, C): L2-normalise(mean_c(F²) flattened) -> (b, prod(spatial)).

  `spatial` resamples mean_c(F²) to that size first (see :func:`at_loss`).
  """
  energy = _energy(features)
  if spatial is not None:
    energy = _resample(energy, tuple(spatial))
  return _l2_normalize(energy.reshape(energy.shape[0], -1))


def at_loss(student_feats: Array | Sequence[Array], teacher_feats: Array | Sequence[Array], *,
            beta: float | Array = 1.0, mask: Array | None = None) -> Array:
  """Attention transfer ``β · Σ_layers mean((at_s − at_t)²)`` (mean over examples and positions).

  Channel counts may differ. When spatial sizes differ, the teacher's mean_c(F²) map is resampled
  to the student's size before normalisation: average-pooled when each axis is an integer multiple
  of the student's (e.g. 100 -> 50), linearly interpolated otherwise. Maps of different spatial rank
  (a 2-D image teacher for a 1-D student) raise a ValueError: use :func:`sp_loss` for those.
  """
  student_feats, teacher_feats = _as_list(student_feats), _as_list(teacher_feats)
  if len(student_feats) != len(teacher_feats):
    raise ValueError(f"at_loss: the student gives {len(student_feats)} feature maps but the teacher "
                     f"{len(teacher_feats)}; pass the same chosen layers for both.")
  total = 0.0
  for fs, ft in zip(student_feats, teacher_feats):
    if fs.ndim != ft.ndim:
      raise ValueError(f"at_loss needs student and teacher maps of the same spatial rank, got student "
                       f"{fs.shape} and teacher {ft.shape}; for a 2-D (image) teacher and a 1-D "
                       "student use sp_loss, which compares batch similarities of any shapes.")
    spatial = fs.shape[1:-1]
    diff = at_map(fs) - at_map(jax.lax.stop_gradient(ft), spatial)
    total = total + masked_mean(jnp.mean(diff * diff, axis=-1), mask)
  return beta * total


__all__ = [
    "masked_mean", "standardize_logits", "cross_entropy", "focal_loss", "kd_loss", "multi_teacher_kd",
    "distillation_loss", "dual_teacher_loss", "annealing_temperature", "annealing_phi",
    "annealing_kd_loss", "gram", "sp_loss", "at_map", "at_loss",
]
