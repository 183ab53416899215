"""The primitives the distillation terms share (docs/protocol.md §4): cross-entropy, focal, KD and
the per-example KL, Gram matrices, masked means, safe norms and divisions. Each method's own math
lives in its term module, `jkd/distill/<name>.py`.

All functions are jittable and vmappable (hyper-parameters such as ``temperature`` may be traced
per-run values) and take an optional per-example ``mask`` of shape ``(B,)`` (0/1 or non-negative
weights). Per-example losses are averaged as ``sum(mask * l) / sum(mask)`` (0 when the mask is
all zero), so padded examples have no influence. Teacher inputs always pass through
``jax.lax.stop_gradient``.

Masks on batch-relational terms (DIST's intra term, RKD, PKT, DCD, SP): a masked-out example
is dropped from every pair or triplet it is part of, so for a 0/1 mask the loss equals the loss
of the real examples alone. Masked-out entries are removed with `jnp.where` (not multiplied by
0), so any finite garbage in them has no effect.

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
REDUCTIONS = ("batchmean", "mean")
# Products the losses assume in float32 run without TF32/bf16 passes on accelerators.
HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------------
# Masks, checks, safe norms


def masked_mean(values: Array, mask: Array | None = None) -> Array:
  """Mean of per-example `values` (B,), weighted by `mask` (B,); 0 when the mask sums to 0."""
  if mask is None:
    return jnp.mean(values)
  mask = check_mask(mask, values.shape[0])
  total = jnp.sum(mask)
  return jnp.sum(mask * values) / jnp.where(total > 0, total, 1.0)


def mask_weights(mask: Array | None, batch: int) -> Array:
  return jnp.ones((batch,), jnp.float32) if mask is None else check_mask(mask, batch)


def check_mask(mask: Array, batch: int) -> Array:
  mask = jnp.asarray(mask)
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape (batch,) = ({batch},), got {mask.shape}; pass one "
                     "weight per example (1 = real, 0 = padding).")
  return mask.astype(jnp.float32)


def check_logits(student: Array, teacher: Array) -> None:
  if student.shape != teacher.shape:
    raise ValueError(f"student logits {student.shape} and teacher logits {teacher.shape} must have "
                     "the same shape (batch, classes); check both models use the same num_classes.")


def check_labels(labels: Array, logits: Array) -> Array:
  labels = jnp.asarray(labels)
  if labels.shape != logits.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices of shape (batch,) = ({logits.shape[0]},), "
                     f"got {labels.shape} {labels.dtype}.")
  return labels


def check_same(a: Array, b: Array, what: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{what}: student {a.shape} and teacher {b.shape} must have the same shape.")


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """`F.normalize(x, p=2, dim=axis)`: x / max(||x||, 1e-12)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)


def safe_div(num: Array, den: Array) -> Array:
  """num / den, with 0 where den == 0 (no NaN value or gradient)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def safe_norm(x: Array, axis: int = -1, keepdims: bool = True) -> Array:
  """``sqrt(Σ x²)`` whose gradient at the zero vector is 0 (PyTorch's `norm` backward), not NaN."""
  ss = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  pos = ss > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)


def normalize_finite(x: Array, eps: float = NORMALIZE_EPS) -> Array:
  """`F.normalize`: ``x / max(‖x‖, eps)`` (zero vectors stay 0), with finite gradients at 0."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def as_list(feats: Array | Sequence[Array]) -> list[Array]:
  """One map (anything with a shape) or a sequence of maps -> a list of maps."""
  return [feats] if hasattr(feats, "shape") else list(feats)


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
  if reduction not in REDUCTIONS:
    raise ValueError(f"kd_loss reduction must be one of {REDUCTIONS}, got {reduction!r}.")
  check_logits(student_logits, teacher_logits)
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


def kl_per_example(z_s: Array, z_t: Array, *, temperature: float | Array = 4.0) -> Array:
  """``KL_T = T² Σ_c p_t (log p_t − log p_s)`` per example, ``p = softmax(z / T)`` (the
  authors' ``DistillKL`` unreduced; `z_t` (..., B, C) broadcasts against `z_s` (B, C)). The
  teacher logits are taken as given: callers stop their gradient."""
  log_ps = jax.nn.log_softmax(z_s / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(z_t / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)


# --------------------------------------------------------------------------------------------------
# Batch similarity


def gram(features: Array, *, normalize: bool = True, mask: Array | None = None) -> Array:
  """Batch similarity ``G = Q Qᵀ`` of `features` (b, ...) flattened to Q (b, D); (b, b).

  ``normalize`` L2-normalises each row (``F.normalize(G, dim=1)``). With `mask`, rows and columns of
  masked-out examples (mask 0) are zero, so real rows are normalised over real columns only.
  The product runs at full float32 precision (no TF32/bf16 passes on accelerators, like PyTorch).
  """
  q = features.reshape(features.shape[0], -1).astype(jnp.float32)
  g = jnp.matmul(q, q.T, precision=jax.lax.Precision.HIGHEST)
  if mask is not None:       # on G, not on Q: the same zeros without a pass over the features
    keep = check_mask(mask, q.shape[0]) > 0
    g = jnp.where(keep[:, None] & keep[None, :], g, 0.0)
  return l2_normalize(g) if normalize else g


__all__ = [
    "Array", "NORMALIZE_EPS", "CE_STD_SCALE", "KD_STD_SCALE", "REDUCTIONS", "HIGHEST",
    "masked_mean", "mask_weights", "check_mask", "check_logits", "check_labels", "check_same",
    "l2_normalize", "safe_div", "safe_norm", "normalize_finite", "as_list", "standardize_logits",
    "cross_entropy", "focal_loss", "kd_loss", "kl_per_example", "gram",
]
