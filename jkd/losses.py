"""Every loss a KD train step uses (docs/protocol.md §4), each a small pure function of jnp arrays.

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

import math
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


# --------------------------------------------------------------------------------------------------
# Distillation methods as their authors' code computes them. Sources (GitHub): mdistiller
# (megvii-research/mdistiller), RepDistiller (HobbitLong/RepDistiller), DIST
# (hunto/image_classification_sota, the `classification` submodule of hunto/DIST_KD), CA-MKD
# (Rorozhl/CA-MKD), SimKD (DefangChen/SimKD), SRRL (jingyang2017/KD_SRRL), PEFD (chenyd7/PEFD).
#
# Masks: weights act per example on per-example terms (`masked_mean`); on batch-relational terms
# (DIST's intra term, RKD, PKT) a masked-out example is dropped from every pair/triplet it is part
# of, so for a 0/1 mask the loss equals the loss of the real examples alone. Masked-out entries
# are removed with `jnp.where` (not multiplied by 0), so any finite garbage in them has no effect.

DIST_EPS = 1e-8          # DIST: added to the cosine denominator (dist_kd.py `cosine_similarity`)
PKT_EPS = 1e-7           # PKT: RepDistiller distiller_zoo/PKT.py `cosine_similarity_loss`
CRD_EPS = 1e-7           # CRD: RepDistiller crd/criterion.py `eps`
RKD_PDIST_EPS = 1e-12    # RKD: RepDistiller distiller_zoo/RKD.py `pdist(eps=1e-12)`
DKD_GT_OFFSET = 1000.0   # DKD: mdistiller `logits / T - 1000.0 * gt_mask`
_HIGHEST = jax.lax.Precision.HIGHEST


def _weights(mask: Array | None, batch: int) -> Array:
  return jnp.ones((batch,), jnp.float32) if mask is None else _check_mask(mask, batch)


def _safe_div(num: Array, den: Array) -> Array:
  """num / den, with 0 where den == 0 (no NaN value or gradient)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _safe_norm(x: Array, axis: int = -1, keepdims: bool = True) -> Array:
  """``sqrt(Σ x²)`` whose gradient at the zero vector is 0 (PyTorch's `norm` backward), not NaN."""
  ss = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  pos = ss > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)


def _normalize_finite(x: Array, eps: float = NORMALIZE_EPS) -> Array:
  """`F.normalize`: ``x / max(‖x‖, eps)`` (zero vectors stay 0), with finite gradients at 0."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _check_labels(labels: Array, logits: Array) -> Array:
  labels = jnp.asarray(labels)
  if labels.shape != logits.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices of shape (batch,) = ({logits.shape[0]},), "
                     f"got {labels.shape} {labels.dtype}.")
  return labels


def _check_same(a: Array, b: Array, what: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{what}: student {a.shape} and teacher {b.shape} must have the same shape.")


# DKD — Decoupled KD (Zhao et al., CVPR 2022), mdistiller mdistiller/distillers/DKD.py


def _dkd_per_example(z_s: Array, z_t: Array, labels: Array, temperature) -> tuple[Array, Array]:
  _check_logits(z_s, z_t)
  labels = _check_labels(labels, z_s)
  z_t = jax.lax.stop_gradient(z_t)
  gt = jax.nn.one_hot(labels, z_s.shape[-1], dtype=jnp.bool_)

  def log_binary(z):
    # log [p_gt, Σ_{j≠gt} p_j] of p = softmax(z), both terms from log-sum-exps: the same values as
    # torch.log(cat_mask(softmax(z))) in normal ranges, but finite when a probability underflows.
    lse = jax.nn.logsumexp(z, axis=-1)
    log_gt = jnp.sum(jnp.where(gt, z, 0.0), axis=-1) - lse
    log_other = jax.nn.logsumexp(jnp.where(gt, -jnp.inf, z), axis=-1) - lse
    return jnp.stack([log_gt, log_other], axis=-1)

  zs, zt = z_s / temperature, z_t / temperature
  lb_s, lb_t = log_binary(zs), log_binary(zt)
  tckd = jnp.sum(jnp.exp(lb_t) * (lb_t - lb_s), axis=-1)
  lq_s = jax.nn.log_softmax(zs - DKD_GT_OFFSET * gt, axis=-1)
  lq_t = jax.nn.log_softmax(zt - DKD_GT_OFFSET * gt, axis=-1)
  nckd = jnp.sum(jnp.exp(lq_t) * (lq_t - lq_s), axis=-1)
  t2 = temperature ** 2
  return t2 * tckd, t2 * nckd


def dkd_parts(z_s: Array, z_t: Array, labels: Array, *, temperature: float | Array,
              mask: Array | None = None) -> tuple[Array, Array]:
  """DKD's two terms ``(TCKD, NCKD)``, each ``T² · KL`` averaged over (masked) examples.

  See :func:`dkd_loss`; ``dkd_loss = α · TCKD + β · NCKD``.
  """
  tckd, nckd = _dkd_per_example(z_s, z_t, labels, temperature)
  return masked_mean(tckd, mask), masked_mean(nckd, mask)


def dkd_loss(z_s: Array, z_t: Array, labels: Array, *, alpha: float | Array, beta: float | Array,
             temperature: float | Array, mask: Array | None = None) -> Array:
  """Decoupled KD ``α · TCKD + β · NCKD`` (mdistiller `dkd_loss`).

  With ``p = softmax(z / T)`` and the binary vector ``b = [p_gt, Σ_{j≠gt} p_j]``:
  ``TCKD = T² KL(b_t ‖ b_s)``; ``NCKD = T² KL(q_t ‖ q_s)`` with ``q = softmax(z / T − 1000 · onehot_gt)``
  (the 1000 is subtracted AFTER dividing by T, so the target class drops out). Both are summed over
  classes and averaged over examples (``kl_div(size_average=False) / B`` = 'batchmean').
  `labels`: int (B,). No warm-up here: mdistiller multiplies by ``min(epoch / WARMUP, 1)`` outside.
  Defaults there: α=1, β=8, T=4.

  NaN/inf safety: mdistiller takes ``torch.log`` of the binary probabilities without eps, which is
  −inf (and the loss inf or NaN) when one underflows. Here ``log b`` is computed as log-sum-exps
  of the logits (``log p_gt = z_gt − lse(z)``, ``log Σ_{j≠gt} p_j = lse(z_{j≠gt}) − lse(z)``):
  mathematically the same, equal to float rounding in normal ranges, and finite (with finite
  gradients) for any finite logits. NCKD uses log-softmax, as mdistiller does.
  """
  tckd, nckd = _dkd_per_example(z_s, z_t, labels, temperature)
  return masked_mean(alpha * tckd + beta * nckd, mask)


# DIST (Huang et al., NeurIPS 2022), hunto/image_classification_sota lib/models/losses/dist_kd.py


def _pearson(a: Array, b: Array, w: Array | None) -> Array:
  """Pearson correlation of the rows of a, b (N, M) over M (weights `w` (M,)), DIST's eps added."""
  if w is None:
    ac = a - jnp.mean(a, axis=1, keepdims=True)
    bc = b - jnp.mean(b, axis=1, keepdims=True)
  else:
    keep = w > 0
    total = jnp.sum(w)
    total = jnp.where(total > 0, total, 1.0)
    a, b = jnp.where(keep, a, 0.0), jnp.where(keep, b, 0.0)
    root = jnp.sqrt(w)
    ac = jnp.where(keep, (a - jnp.sum(w * a, axis=1, keepdims=True) / total) * root, 0.0)
    bc = jnp.where(keep, (b - jnp.sum(w * b, axis=1, keepdims=True) / total) * root, 0.0)
  num = jnp.sum(ac * bc, axis=1)
  return num / (_safe_norm(ac, 1, False) * _safe_norm(bc, 1, False) + DIST_EPS)


def dist_loss(z_s: Array, z_t: Array, *, beta: float | Array, gamma: float | Array,
              temperature: float | Array, mask: Array | None = None) -> Array:
  """DIST ``τ² · (β · inter + γ · intra)`` on ``Y = softmax(z / τ)`` (B, C).

  ``inter = 1 − mean_i pearson(Ys[i, :], Yt[i, :])`` (per example, over classes);
  ``intra = 1 − mean_c pearson(Ys[:, c], Yt[:, c])`` (per class, over the batch). As in the authors'
  code the Pearson correlation is the cosine of the centred vectors, ``Σ a·b / (‖a‖‖b‖ + 1e-8)``
  (eps added, not a clamp). Their trainer multiplies the loss by ``kd_loss_weight = 2`` outside;
  ImageNet uses β=γ=τ=1, CIFAR τ=4.

  `mask`: inter is a masked mean over examples. The intra term correlates over the batch, so a
  masked-out example is removed from it altogether: the batch means and the sums are weighted by the
  mask (a weighted Pearson correlation, ``Σ w (a − ā_w)(b − b̄_w)``); for a 0/1 mask this is exactly
  the intra term of the real examples alone.

  Gradients: the correlation is scale-free, so where a centred row is (nearly) zero — e.g. a
  student whose logits are all equal — the gradient is of order 1/(‖centred row‖ + 1e-8), up to
  ~1e7 at an exactly uniform softmax; PyTorch's autograd gives the same for the authors' code.
  """
  _check_logits(z_s, z_t)
  z_t = jax.lax.stop_gradient(z_t)
  y_s = jax.nn.softmax(z_s / temperature, axis=-1)
  y_t = jax.nn.softmax(z_t / temperature, axis=-1)
  w = None if mask is None else _check_mask(mask, z_s.shape[0])
  inter = 1.0 - masked_mean(_pearson(y_s, y_t, None), mask)
  intra = 1.0 - jnp.mean(_pearson(y_s.T, y_t.T, w))
  return temperature ** 2 * (beta * inter + gamma * intra)


# RKD (Park et al., CVPR 2019), RepDistiller distiller_zoo/RKD.py (mdistiller RKD.py is the same)


def _huber(x: Array) -> Array:
  """`F.smooth_l1_loss` elementwise with beta = 1."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def _rkd_pdist(e: Array) -> Array:
  """RKD `pdist(squared=False)`: sqrt(clamp(‖e_i‖² + ‖e_j‖² − 2 e_i·e_j, 1e-12)), diagonal 0."""
  sq = jnp.sum(e * e, axis=-1)
  prod = jnp.matmul(e, e.T, precision=_HIGHEST)
  d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * prod, RKD_PDIST_EPS))
  return jnp.where(jnp.eye(e.shape[0], dtype=jnp.bool_), 0.0, d)


def _rkd_angles(e: Array) -> Array:
  """``a_ijk = <v_ij, v_ik>`` with ``v_ij = normalize(e_j − e_i)``, all B³ triplets."""
  v = _normalize_finite(e[None, :, :] - e[:, None, :])
  return jnp.einsum("ijd,ikd->ijk", v, v, precision=_HIGHEST)


def rkd_loss(e_s: Array, e_t: Array, *, distance_weight: float | Array,
             angle_weight: float | Array, mask: Array | None = None) -> Array:
  """Relational KD ``w_d · loss_d + w_a · loss_a`` on embeddings (B, D_s) and (B, D_t).

  As RepDistiller's `RKDLoss` (w_d=25, w_a=50 there): inputs are flattened to (B, D);
  ``d_ij = sqrt(clamp(‖e_i‖² + ‖e_j‖² − 2 e_i·e_j, 1e-12))`` with the diagonal 0, each matrix divided
  by the mean of its entries > 0; ``loss_d = smooth_l1(d_s, d_t)`` (Huber δ=1, mean over B²).
  ``v_ij = F.normalize(e_j − e_i)``, ``a_ijk = <v_ij, v_ik>``; ``loss_a = smooth_l1(a_s, a_t)``
  averaged over all B³ triplets, degenerate ones (j = i or k = i, zero on both sides) included.
  The teacher side is constant. If no distance is > 0 (one example), the distances stay 0 (the
  authors' mean of an empty set would be NaN).

  `mask`: an entry (i, j) has weight ``w_i w_j`` and a triplet ``w_i w_j w_k``, normalised by
  ``(Σ w)²`` and ``(Σ w)³``; the mean distance is over real pairs. For a 0/1 mask this is RKD on
  the real examples alone.

  Gradients are finite everywhere, but where two student embeddings coincide exactly,
  ``F.normalize(0)``'s gradient is 1/eps = 1e12 (PyTorch's too).
  """
  batch = e_s.shape[0]
  if e_t.shape[0] != batch:
    raise ValueError(f"rkd_loss: student {e_s.shape} and teacher {e_t.shape} batch sizes differ.")
  e_s = e_s.reshape(batch, -1)
  e_t = jax.lax.stop_gradient(e_t).reshape(batch, -1)
  w = _weights(mask, batch)
  total = jnp.sum(w)
  total = jnp.where(total > 0, total, 1.0)
  pair = w[:, None] * w[None, :]
  keep = pair > 0

  def normalized_distance(e):
    d = _rkd_pdist(e)
    pos = keep & (d > 0)
    mean = _safe_div(jnp.sum(jnp.where(pos, pair * d, 0.0)), jnp.sum(jnp.where(pos, pair, 0.0)))
    return d / jnp.where(mean > 0, mean, 1.0)

  diff = normalized_distance(e_s) - normalized_distance(e_t)
  loss_d = jnp.sum(jnp.where(keep, pair * _huber(diff), 0.0)) / total ** 2
  triple = w[:, None, None] * pair[None, :, :]
  diff_a = _rkd_angles(e_s) - _rkd_angles(e_t)
  loss_a = jnp.sum(jnp.where(triple > 0, triple * _huber(diff_a), 0.0)) / total ** 3
  return distance_weight * loss_d + angle_weight * loss_a


# PKT (Passalis & Tefas, ECCV 2018), RepDistiller distiller_zoo/PKT.py (from passalis/probabilistic_kt)


def pkt_loss(e_s: Array, e_t: Array, mask: Array | None = None) -> Array:
  """Probabilistic KT on embeddings (B, D_s), (B, D_t) (the dimensions may differ).

  ``x ← x / (‖x‖ + 1e-7)`` (NaN → 0), ``K = (x xᵀ + 1) / 2``, ``P = K / rowsum(K)`` (diagonal kept),
  ``L = mean_{i,j} P_t,ij · log((P_t,ij + 1e-7) / (P_s,ij + 1e-7))`` — a mean over B² entries. The
  weight in RepDistiller/mdistiller is 30000 (outside).

  `mask`: masked-out examples are removed from the kernels (rows and columns), each real row is
  normalised over the real columns, and entry (i, j) is weighted ``w_i w_j / (Σ w)²``. For a 0/1 mask
  this is PKT on the real examples alone.
  """
  batch = e_s.shape[0]
  if e_t.shape[0] != batch:
    raise ValueError(f"pkt_loss: student {e_s.shape} and teacher {e_t.shape} batch sizes differ.")
  w = _weights(mask, batch)
  pair = w[:, None] * w[None, :]
  keep = pair > 0

  def probabilities(x):
    x = x.reshape(batch, -1)
    x = x / (_safe_norm(x) + PKT_EPS)
    x = jnp.where(jnp.isnan(x), 0.0, x)
    k = jnp.where(keep, (jnp.matmul(x, x.T, precision=_HIGHEST) + 1.0) / 2.0, 0.0)
    return _safe_div(k, jnp.sum(k, axis=1, keepdims=True))

  p_s, p_t = probabilities(e_s), probabilities(jax.lax.stop_gradient(e_t))
  terms = p_t * jnp.log((p_t + PKT_EPS) / (p_s + PKT_EPS))
  total = jnp.sum(w)
  return jnp.sum(jnp.where(keep, pair * terms, 0.0)) / jnp.where(total > 0, total, 1.0) ** 2


# FitNet (Romero et al., ICLR 2015), SimKD's MSE, PEFD, SRRL


def fitnet_loss(f_s_regressed: Array, f_t: Array, mask: Array | None = None) -> Array:
  """FitNet hint loss ``nn.MSELoss()(r(f_s), f_t)``: the mean over all elements.

  RepDistiller distiller_zoo/FitNet.py `HintLoss` (weight 100 outside). Also SimKD's loss
  (``MSE(P(f_s), f_t)``, DefangChen/SimKD) and SRRL's ``L_sr = MSE(fc_t(pool(f_s')), z_t)``.
  With `mask`: the per-example mean over the other axes, then the masked mean (without a mask,
  the same as the mean over all elements).
  """
  _check_same(f_s_regressed, f_t, "fitnet_loss")
  f_t = jax.lax.stop_gradient(f_t)
  diff = (f_s_regressed - f_t).reshape(f_t.shape[0], -1)
  return masked_mean(jnp.mean(diff * diff, axis=-1), mask)


def pefd_loss(f_s_projected: Array, f_t: Array, mask: Array | None = None) -> Array:
  """PEFD ``mean_i (1 − cos(f_t,i, f̂_s,i))`` with f̂_s the projector-ensemble output (B, D).

  chenyd7/PEFD helper/loops.py: the cosine has no eps (weight 25 outside). A zero vector, for
  which the authors' code gives NaN, has cosine 0 here.
  """
  _check_same(f_s_projected, f_t, "pefd_loss")
  f_t = jax.lax.stop_gradient(f_t)
  a, b = f_s_projected.reshape(f_t.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
  cos = _safe_div(jnp.sum(a * b, axis=-1), _safe_norm(a, -1, False) * _safe_norm(b, -1, False))
  return masked_mean(1.0 - cos, mask)


def srrl_statm_loss(f_s_connected: Array, f_t: Array, mask: Array | None = None) -> Array:
  """SRRL feature term ``mean_b mean_c (mean_pos f_s'[b, c] − mean_pos f_t[b, c])²``.

  jingyang2017/KD_SRRL distiller_zoo/AIN.py `statm_loss`: the squared L2 between the spatially
  average-pooled connector output (B, *spatial, C) and teacher map (channels-last; the spatial
  sizes may differ, the channels must match), averaged over channels and (masked) examples.
  """
  if f_s_connected.shape[0] != f_t.shape[0] or f_s_connected.shape[-1] != f_t.shape[-1]:
    raise ValueError(f"srrl_statm_loss: student {f_s_connected.shape} and teacher {f_t.shape} need "
                     "the same batch and channel sizes; connect the student to the teacher's channels.")
  f_t = jax.lax.stop_gradient(f_t)
  pool = lambda f: jnp.mean(f, axis=tuple(range(1, f.ndim - 1))) if f.ndim > 2 else f
  diff = pool(f_s_connected) - pool(f_t)
  return masked_mean(jnp.mean(diff * diff, axis=-1), mask)


# Multi-teacher weighting: CA-MKD helper/loops.py `train_distill_multi_teacher` (Rorozhl/CA-MKD)


def _check_teacher_logits(teacher_logits: Array) -> Array:
  teacher_logits = jnp.asarray(teacher_logits)
  if teacher_logits.ndim != 3:
    raise ValueError(f"teacher logits must be stacked as (teachers, batch, classes), got shape "
                     f"{teacher_logits.shape}.")
  return teacher_logits


def ebkd_weights(teacher_logits: Array) -> Array:
  """EBKD teacher weights (K, B) as CA-MKD's re-implementation computes them.

  ``H_kb = −Σ_c p log p`` with ``p = softmax(z_kb)`` (T = 1), ``w_kb = 1 − H_kb / Σ_j H_jb``: each
  column sums to K − 1 (not 1). ``p log p`` is computed as ``p · log_softmax`` (0 for an underflowed
  p, where ``torch.log`` gives NaN); if every teacher's entropy is 0 the weights are 1.
  """
  z = jax.lax.stop_gradient(_check_teacher_logits(teacher_logits))
  log_p = jax.nn.log_softmax(z, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  return 1.0 - _safe_div(entropy, jnp.sum(entropy, axis=0, keepdims=True))


def _camkd_weights(logits: Array, labels: Array) -> Array:
  logits = _check_teacher_logits(logits)
  k = logits.shape[0]
  if k < 2:
    raise ValueError(f"CA-MKD weights need at least 2 teachers (they divide by K − 1), got {k}.")
  labels = _check_labels(labels, logits[0])
  log_p = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(log_p, labels[None, :, None], axis=-1)[..., 0]          # (K, B)
  return (1.0 - jax.nn.softmax(ce, axis=0)) / (k - 1)


def camkd_weights(teacher_logits: Array, labels: Array) -> Array:
  """CA-MKD teacher weights (K, B): ``(1 − softmax_k(CE(z_kb, y_b))) / (K − 1)``; columns sum to 1.

  CE at T = 1 per example; the softmax runs over the teachers. Teacher logits are constants.
  """
  return _camkd_weights(jax.lax.stop_gradient(_check_teacher_logits(teacher_logits)), labels)


def kl_per_example(z_s: Array, z_t: Array, *, temperature: float | Array = 4.0) -> Array:
  """``KL_T = T² Σ_c p_t (log p_t − log p_s)`` per example, ``p = softmax(z / T)`` (the
  authors' ``DistillKL`` unreduced; `z_t` (..., B, C) broadcasts against `z_s` (B, C)). The
  teacher logits are taken as given: callers stop their gradient."""
  log_ps = jax.nn.log_softmax(z_s / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(z_t / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)


def weighted_kd(z_s: Array, teacher_logits: Array, weights: Array, *,
                temperature: float | Array = 4.0, reduction: str = "batchmean",
                mask: Array | None = None) -> Array:
  """``Σ_k Σ_b w_kb · KL_T,kb / (B · K)``, CA-MKD's weighted multi-teacher KD (EBKD and CA-MKD).

  ``KL_T,kb = T² Σ_c p_t (log p_t − log p_s)`` per example (CA-MKD `DistillKL(is_ca=True)`);
  ``reduction='mean'`` divides it by the number of classes, as in :func:`kd_loss`. `teacher_logits`
  (K, B, C) are constants; `weights` (K, B) are used as given (gradients flow into them if they
  carry any). With `mask`, B becomes ``Σ mask`` and masked-out examples drop out. Note the 1/K:
  in CA-MKD's code, not in its paper's formula.
  """
  if reduction not in _REDUCTIONS:
    raise ValueError(f"weighted_kd reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
  teacher_logits = jax.lax.stop_gradient(_check_teacher_logits(teacher_logits))
  k, batch, classes = teacher_logits.shape
  if z_s.shape != (batch, classes):
    raise ValueError(f"weighted_kd: student logits {z_s.shape} do not match teacher logits "
                     f"{teacher_logits.shape} (teachers, batch, classes).")
  weights = jnp.asarray(weights)
  if weights.shape != (k, batch):
    raise ValueError(f"weighted_kd weights must have shape (teachers, batch) = ({k}, {batch}), got "
                     f"{weights.shape}.")
  kl = kl_per_example(z_s, teacher_logits, temperature=temperature)                     # (K, B)
  if reduction == "mean":
    kl = kl / classes
  return masked_mean(jnp.sum(weights * kl, axis=0), mask) / k


def camkd_feature_loss(student_feats: Sequence[Array], teacher_feats: Sequence[Array],
                       head_logits: Array | Sequence[Array], labels: Array, *,
                       mask: Array | None = None) -> Array:
  """CA-MKD intermediate term ``Σ_k Σ_b w_kb · mean_{pos,C}(F_k − f_t,k)² / (B · K)``.

  Rorozhl/CA-MKD distiller_zoo/CAMKD.py: `student_feats[k]` = F_k, the aligned student map after
  teacher k's embed; `teacher_feats[k]` its teacher's map (constant); `head_logits` (K, B, C) (or a
  list) = teacher k's pooling + fc applied to F_k. ``w = (1 − softmax_k CE(head_k, y)) / (K − 1)``
  is NOT detached, as in the authors' code: gradients flow through the weights into F_k.
  Weight 50 outside (and dropped in epoch 1 there).
  """
  if len(student_feats) != len(teacher_feats):
    raise ValueError(f"camkd_feature_loss: {len(student_feats)} student maps but "
                     f"{len(teacher_feats)} teacher maps; pass one of each per teacher.")
  head_logits = head_logits if hasattr(head_logits, "shape") else jnp.stack(list(head_logits))
  if head_logits.shape[0] != len(student_feats):
    raise ValueError(f"camkd_feature_loss: {head_logits.shape[0]} heads' logits for "
                     f"{len(student_feats)} teachers.")
  weights = _camkd_weights(head_logits, labels)
  mse = []
  for f_s, f_t in zip(student_feats, teacher_feats):
    _check_same(f_s, f_t, "camkd_feature_loss")
    diff = (f_s - jax.lax.stop_gradient(f_t)).reshape(f_s.shape[0], -1)
    mse.append(jnp.mean(diff * diff, axis=-1))
  return masked_mean(jnp.sum(weights * jnp.stack(mse), axis=0), mask) / len(student_feats)


# CRD (Tian et al., ICLR 2020), RepDistiller crd/criterion.py and crd/memory.py


def crd_memory_init_bound(feat_dim: int) -> float:
  """The memory banks' init bound ``1 / sqrt(feat_dim / 3)`` (U(−b, b), crd/memory.py)."""
  return 1.0 / math.sqrt(feat_dim / 3)


def crd_memory_init(key: Array, num_data: int, feat_dim: int = 128) -> Array:
  """One memory bank (num_data, feat_dim) ~ U(−b, b), b = :func:`crd_memory_init_bound`."""
  b = crd_memory_init_bound(feat_dim)
  return jax.random.uniform(key, (num_data, feat_dim), jnp.float32, -b, b)


def crd_scores(memory: Array, contrast_idx: Array, emb: Array, *,
               temperature: float | Array) -> Array:
  """``exp(<memory[contrast_idx], emb> / T)`` (B, K+1), before the division by Z.

  `memory` (N, D) is a constant (``.detach()`` in `ContrastMemory`); `contrast_idx` (B, K+1) has the
  positive in column 0; `emb` (B, D). In CRD the student embedding is scored against the TEACHER
  memory (`memory_v2`) and vice versa. T = 0.07 there.
  """
  contrast_idx = jnp.asarray(contrast_idx)
  if contrast_idx.ndim != 2 or contrast_idx.shape[0] != emb.shape[0]:
    raise ValueError(f"crd_scores: contrast_idx must be (batch, K+1) = ({emb.shape[0]}, K+1), got "
                     f"{contrast_idx.shape}.")
  weight = jax.lax.stop_gradient(memory)[contrast_idx]                                # (B, K+1, D)
  return jnp.exp(jnp.einsum("bkd,bd->bk", weight, emb, precision=_HIGHEST) / temperature)


def crd_estimate_z(scores: Array, *, num_data: int | Array, mask: Array | None = None) -> Array:
  """CRD's normalisation constant ``Z = mean(scores) · N``, estimated once (first batch), constant.

  With `mask`, the mean is over the real examples' rows.
  """
  per_example = jnp.mean(jax.lax.stop_gradient(scores), axis=-1)
  return masked_mean(per_example, mask) * num_data


def crd_nce_loss(scores: Array, *, num_data: int | Array, eps: float = CRD_EPS,
                 mask: Array | None = None) -> Array:
  """CRD's NCE loss (Eq. 18), RepDistiller `ContrastLoss`, for normalised scores ``x`` (B, K+1).

  Column 0 is the positive. With ``Pn = 1 / N`` and ``m = K``:
  ``−[log(x_0 / (x_0 + m Pn + eps)) + Σ_{k≥1} log(m Pn / (x_k + m Pn + eps))]``, averaged over
  (masked) examples. ``L_CRD = loss(out_s) + loss(out_t)`` (weight 0.8 outside).
  """
  m = scores.shape[1] - 1
  noise = m / num_data
  log_d1 = jnp.log(scores[:, 0] / (scores[:, 0] + noise + eps))
  log_d0 = jnp.log(noise / (scores[:, 1:] + noise + eps))
  return masked_mean(-(log_d1 + jnp.sum(log_d0, axis=-1)), mask)


def crd_memory_update(memory: Array, idx: Array, emb: Array, momentum: float | Array = 0.5, *,
                      mask: Array | None = None) -> Array:
  """``memory[idx] ← normalize(m · memory[idx] + (1 − m) · emb)``; returns the new memory.

  As `ContrastMemory.forward` (no gradient; ``x / ‖x‖`` without eps — a zero vector stays 0 here).
  Call it after scoring. Repeated indices in one batch: which write wins is unspecified (as with
  `index_copy_`). With `mask`, masked-out rows write nothing.
  """
  idx = jnp.asarray(idx)
  emb = jax.lax.stop_gradient(emb)
  pos = memory[idx] * momentum + emb * (1.0 - momentum)
  updated = _safe_div(pos, jnp.sqrt(jnp.sum(pos * pos, axis=-1, keepdims=True)))
  if mask is None:
    return memory.at[idx].set(updated)
  keep = _check_mask(mask, idx.shape[0]) > 0
  idx = jnp.where(keep, idx, memory.shape[0])          # out of bounds: dropped
  return memory.at[idx].set(updated, mode="drop")


# DCD (Giakoumoglou & Stathaki, arXiv 2407.11802), giakoumoglou/distillers distillers/DCD.py

DCD_MAX_TAU = 10.0     # DCD: `DCDLoss(max_tau=10.0)`, the clamp of exp(tau)
_DCD_MASKED = -1e9     # a masked-out column's logit: exp underflows to 0, finite in masked rows


def dcd_loss(f_s: Array, f_t: Array, *, tau: Array, bias: Array, alpha: float | Array = 0.5,
             max_tau: float | Array = DCD_MAX_TAU, mask: Array | None = None) -> Array:
  """DCD's contrastive + consistency loss on the embedded student and teacher rows (B, D).

  `DCDLoss.forward`: ``a = normalize(f_s)``, ``b = normalize(f_t)`` (F.normalize), ``s = min(e^tau,
  max_tau)`` (``exp().clamp(0, max_tau)``: no gradient into tau above the bound),
  ``L = s · a bᵀ + bias`` (B, B; in-batch negatives, the positive on the diagonal);
  ``contrast = mean_i −log softmax_j(L)_ii`` (``cross_entropy(L, arange(B))``) and
  ``consist = mean_i KL(q_i ‖ p_i)`` with ``p_i = softmax_j L_ij``, ``q_i = softmax_j L_ji``
  (``kl_div(log_softmax(L, 1), softmax(L, 0).t(), 'batchmean')``, gradient through both);
  returns ``contrast + alpha · consist``. `tau`, `bias`: the learnable scalars.

  Both inputs are outputs of the trainable heads (``embed_s``, ``embed_t``), so neither is under
  stop_gradient here: the caller stops the teacher's embedding before its head. `mask`: a
  masked-out example is dropped from every row and column (its logits are excluded from each
  softmax) and rows are averaged with weights w; for a 0/1 mask this is DCD on the real examples.
  """
  _check_same(f_s, f_t, "dcd_loss")
  n = f_s.shape[0]
  w = _weights(mask, n)
  keep = w > 0
  pair = keep[:, None] & keep[None, :]
  a, b = _normalize_finite(f_s.reshape(n, -1)), _normalize_finite(f_t.reshape(n, -1))
  scale = jnp.exp(tau)
  scale = jnp.where(scale > max_tau, max_tau, scale)
  logits = jnp.matmul(a, b.T, precision=_HIGHEST) * scale + bias
  log_p = jax.nn.log_softmax(jnp.where(pair, logits, _DCD_MASKED), axis=1)
  log_q = jax.nn.log_softmax(jnp.where(pair, logits, _DCD_MASKED).T, axis=1)
  contrast = -jnp.diagonal(log_p)
  consist = jnp.sum(jnp.where(pair, jnp.exp(log_q) * (log_q - log_p), 0.0), axis=1)
  total = jnp.sum(w)
  row = jnp.where(keep, w * (contrast + alpha * consist), 0.0)
  return jnp.sum(row) / jnp.where(total > 0, total, 1.0)


PROJECTOR_FLOOR = float(jnp.finfo(jnp.float32).tiny)   # the log's floor: log(0) would be −inf


# The role of the projector (Miles & Mikolajczyk, AAAI 2024), roymiles/Simple-Recipe-Distillation
# imagenet/torchdistill/losses/single.py: OurDistillationLoss


def projector_loss(f_s_projected: Array, f_t: Array, *, power: float | Array = 4.0,
                   eps: float = 1e-4, mask: Array | None = None) -> Array:
  """``log Σ_{b,d} |BN(f̂_s) − BN(f_t)|^p`` on the projected student and the teacher rows (B, D).

  `OurDistillationLoss.forward_loss`: both sides go through their own ``BatchNorm1d(D, eps,
  affine=False)`` in training mode (each column standardised with the batch's mean and biased
  variance), the element-wise ``|difference|^p`` (p = 4) is summed over the batch and the
  features, and the log is taken (2 × this outside). A sum, not a mean: it depends on the
  batch size and width. `mask`: the statistics and the sum over the real rows only.

  Guard: the authors take the log without eps, so identical student and teacher rows give
  log 0 = −inf (and a NaN gradient). Here the sum is floored at float32's smallest normal
  number (``log`` ≈ −87.3, gradient 0 there); any sum above it is unchanged.
  """
  _check_same(f_s_projected, f_t, "projector_loss")
  f_t = jax.lax.stop_gradient(f_t)
  n = f_t.shape[0]
  w = _weights(mask, n)[:, None]
  total = jnp.sum(w)

  def bn(x):
    x = x.reshape(n, -1)
    mean = jnp.sum(w * x, 0) / total
    var = jnp.sum(w * (x - mean) ** 2, 0) / total
    return (x - mean) * jax.lax.rsqrt(var + eps)

  diff = jnp.abs(bn(f_s_projected) - bn(f_t))
  return jnp.log(jnp.maximum(jnp.sum(w * diff ** power), PROJECTOR_FLOOR))


__all__ = [
    "masked_mean", "standardize_logits", "cross_entropy", "focal_loss", "kd_loss", "multi_teacher_kd",
    "distillation_loss", "dual_teacher_loss", "annealing_temperature", "annealing_phi",
    "annealing_kd_loss", "gram", "sp_loss", "at_map", "at_loss",
    "dkd_parts", "dkd_loss", "dist_loss", "rkd_loss", "pkt_loss", "fitnet_loss", "pefd_loss",
    "ebkd_weights", "camkd_weights", "kl_per_example", "weighted_kd", "camkd_feature_loss",
    "crd_nce_loss", "crd_scores", "crd_estimate_z", "crd_memory_update", "crd_memory_init_bound",
    "crd_memory_init", "srrl_statm_loss", "dcd_loss", "projector_loss",
]
