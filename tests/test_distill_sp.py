"""SP (`jkd.distill.sp`): the pure loss against numpy (one teacher, teachers merged before the row
normalisation, masks), its scale invariance and its errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd.distill import sp
from numpy_ref import rng as _rng, close as _close, np_gram as _np_gram


def _np_sp(student, teachers, weights):
  total = 0.0
  for layer, fs in enumerate(student):
    gt = sum(w * _np_gram(t[layer], normalize=False) for w, t in zip(weights, teachers))
    gt = gt / np.linalg.norm(gt, axis=1, keepdims=True)
    b = fs.shape[0]
    total += np.sum((_np_gram(fs) - gt) ** 2) / b ** 2
  return total


def _sp_feats(rng, b=6):
  # 1-D student stages (b, L, C) + logits; 1-D signal teacher and 2-D image teacher, other widths.
  student = [rng.normal(size=(b, 20, 4)), rng.normal(size=(b, 10, 8)), rng.normal(size=(b, 5))]
  sig = [rng.normal(size=(b, 20, 12)), rng.normal(size=(b, 10, 24)), rng.normal(size=(b, 5))]
  img = [rng.normal(size=(b, 8, 8, 3)), rng.normal(size=(b, 4, 4, 6)), rng.normal(size=(b, 5))]
  as32 = lambda fs: [np.abs(f).astype(np.float32) + 0.1 * i for i, f in enumerate(fs)]
  return as32(student), as32(sig), as32(img)


def _j(fs):
  return [jnp.asarray(f) for f in fs]


def test_sp_loss_matches_numpy_single_and_merged_teachers():
  student, sig, img = _sp_feats(_rng(12))
  _close(sp.sp_loss(_j(student), _j(sig)), _np_sp(student, [sig], [1.0]), rtol=1e-4)
  got = sp.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[0.3, 0.7], beta=200.0)
  _close(got, 200.0 * _np_sp(student, [sig, img], [0.3, 0.7]), rtol=1e-4)
  # Merging happens before normalisation: differs from averaging the normalised Gram matrices.
  g_avg = 0.3 * _np_gram(sig[0]) + 0.7 * _np_gram(img[0])
  g_avg = g_avg / np.linalg.norm(g_avg, axis=1, keepdims=True)
  merged = _np_sp(student[:1], [sig[:1], img[:1]], [0.3, 0.7])
  assert abs(merged - np.sum((_np_gram(student[0]) - g_avg) ** 2) / 36) > 1e-6
  # Weights (1, 0) reduce to the single teacher; 'mean' over layers divides by their number.
  _close(sp.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[1.0, 0.0]),
         sp.sp_loss(_j(student), _j(sig)), rtol=1e-5)
  _close(sp.sp_loss(_j(student), _j(sig), layer_reduction="mean"),
         _np_sp(student, [sig], [1.0]) / 3, rtol=1e-4)


def test_sp_loss_invariant_to_feature_scaling():
  student, sig, img = _sp_feats(_rng(13))
  base = sp.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[0.5, 0.5])
  scaled_s = [f * c for f, c in zip(student, (10.0, 0.01, 3.0))]
  # Scaling both teachers' maps of a layer by the same constant keeps the merged G_t's direction.
  scaled_t = [[f * c for f, c in zip(t, (7.0, 0.2, 5.0))] for t in (sig, img)]
  _close(sp.sp_loss(_j(scaled_s), [_j(scaled_t[0]), _j(scaled_t[1])], teacher_weights=[0.5, 0.5]),
         base, rtol=1e-4)


def test_sp_loss_mask_equals_subset():
  student, sig, img = _sp_feats(_rng(14), b=7)
  mask = np.array([1, 0, 1, 1, 0, 1, 1], np.float32)
  keep = mask > 0
  sub = lambda fs: _j([f[keep] for f in fs])
  got = sp.sp_loss(_j(student), [_j(sig), _j(img)], teacher_weights=[0.4, 0.6],
                       mask=jnp.asarray(mask))
  _close(got, sp.sp_loss(sub(student), [sub(sig), sub(img)], teacher_weights=[0.4, 0.6]),
         rtol=1e-5)
  _close(got, _np_sp([f[keep] for f in student], [[f[keep] for f in sig], [f[keep] for f in img]],
                     [0.4, 0.6]), rtol=1e-4)


def test_sp_loss_no_teacher_gradient_and_layer_count_error():
  student, sig, _ = _sp_feats(_rng(15))
  g = jax.grad(lambda t: sp.sp_loss(_j(student), t))(_j(sig))
  assert all(np.all(np.asarray(x) == 0) for x in g)
  with pytest.raises(ValueError, match="same chosen layers"):
    sp.sp_loss(_j(student), _j(sig[:2]))
