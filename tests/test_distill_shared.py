"""The distillation terms' pure losses together: a masked-out garbage row changes nothing, jit and
vmap over runs with traced hyper-parameters equal each run, gradients stay finite in degenerate
cases (each method's numpy checks: tests/test_distill_<name>.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd.distill import crd, dist, dkd, fitnet, kd, pefd, pkt, rkd
from numpy_ref import rng as _rng, close as _close, f32 as _f32


def _mask_case(name, rng):
  """(function of (student..., mask), real inputs, inputs with a garbage row appended)."""
  B = 5
  zs, zt = rng.normal(size=(B, 4)), rng.normal(size=(B, 4))
  y = rng.integers(0, 4, B)
  es, et = rng.normal(size=(B, 3)), rng.normal(size=(B, 6))
  cases = {
      "dkd": (lambda a, b, c, m: dkd.dkd_loss(a, b, c, alpha=1.0, beta=8.0, temperature=4.0, mask=m),
              (zs, zt, y)),
      "dist": (lambda a, b, m: dist.dist_loss(a, b, beta=1.0, gamma=2.0, temperature=4.0, mask=m),
               (zs, zt)),
      "rkd": (lambda a, b, m: rkd.rkd_loss(a, b, distance_weight=25.0, angle_weight=50.0, mask=m),
              (es, et)),
      "pkt": (lambda a, b, m: pkt.pkt_loss(a, b, mask=m), (es, et)),
      "fitnet": (lambda a, b, m: fitnet.fitnet_loss(a, b, mask=m), (es, es[:, ::-1] * 0.5)),
      "pefd": (lambda a, b, m: pefd.pefd_loss(a, b, mask=m), (es, es[:, ::-1] * 0.5)),
      "weighted_kd": (lambda a, b, c, m: kd.weighted_kd(a, b, c, temperature=4.0, mask=m),
                      (zs, np.stack([zt, zs[::-1]]), rng.uniform(size=(2, B)))),
      "crd_nce": (lambda a, m: crd.crd_nce_loss(a, num_data=50, mask=m),
                  (rng.uniform(0.01, 0.2, size=(B, 4)),)),
  }
  f, real = cases[name]

  def garbage(a):                                 # one more row of large random values
    a = np.asarray(a)
    if a.dtype.kind == "i":
      return np.concatenate([a, [0]])
    junk = rng.normal(size=(1, *a.shape[1:])) * 50
    return np.concatenate([a, np.abs(junk) if name == "crd_nce" else junk])

  if name == "weighted_kd":                         # teachers' logits and weights: (K, B, ...)
    padded = (garbage(real[0]), np.concatenate([real[1], rng.normal(size=(2, 1, 4)) * 50], 1),
              np.concatenate([real[2], rng.uniform(size=(2, 1)) * 9], 1))
  else:
    padded = tuple(garbage(a) for a in real)
  return f, real, padded


def _jnp(a):
  a = np.asarray(a)
  return jnp.asarray(a) if a.dtype.kind == "i" else jnp.asarray(a.astype(np.float32))


@pytest.mark.parametrize("name", ["dkd", "dist", "rkd", "pkt", "fitnet", "pefd", "weighted_kd",
                                  "crd_nce"])
def test_a_masked_out_garbage_row_changes_nothing(name):
  f, real, padded = _mask_case(name, _rng(12))
  B = np.asarray(real[0]).shape[0]
  want = f(*[_jnp(a) for a in real], None)
  mask = jnp.asarray(np.r_[np.ones(B), 0.0].astype(np.float32))
  got = f(*[_jnp(a) for a in padded], mask)
  _close(got, want, rtol=1e-5, atol=1e-6)
  # an all-ones mask is the unmasked loss
  _close(f(*[_jnp(a) for a in real], jnp.ones(B)), want, rtol=1e-6, atol=1e-7)


def test_jit_vmap_over_runs_with_traced_hyperparameters_equals_each_run():
  rng = _rng(13)
  R, B, C = 3, 4, 5
  zs, zt = _f32(rng.normal(size=(R, B, C)), rng.normal(size=(R, B, C)))
  es, et = _f32(rng.normal(size=(R, B, 3)), rng.normal(size=(R, B, 6)))
  y = jnp.asarray(rng.integers(0, C, (R, B)))
  hp = _f32(rng.uniform(0.5, 2, R), rng.uniform(1, 8, R), rng.uniform(1, 4, R))
  mask = jnp.asarray((rng.uniform(size=(R, B)) > 0.3).astype(np.float32)).at[:, 0].set(1.0)

  def all_losses(zs, zt, y, es, et, a, b, T, m):
    return jnp.stack([
        dkd.dkd_loss(zs, zt, y, alpha=a, beta=b, temperature=T, mask=m),
        dist.dist_loss(zs, zt, beta=a, gamma=b, temperature=T, mask=m),
        rkd.rkd_loss(es, et, distance_weight=a, angle_weight=b, mask=m),
        pkt.pkt_loss(es, et, mask=m),
        kd.weighted_kd(zs, jnp.stack([zt, zt[::-1]]), kd.camkd_weights(
            jnp.stack([zt, zt[::-1]]), y), temperature=T, mask=m),
    ])

  got = jax.jit(jax.vmap(all_losses))(zs, zt, y, es, et, *hp, mask)
  one_run = jax.jit(all_losses)
  for r in range(R):
    want = one_run(zs[r], zt[r], y[r], es[r], et[r], hp[0][r], hp[1][r], hp[2][r], mask[r])
    _close(got[r], want, rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_also_in_degenerate_cases():
  # Finite, not small: as in the authors' PyTorch code, DIST's gradient at a constant softmax row
  # is ~1/eps (1e-8 added to the cosine denominator) and RKD's angle gradient at coinciding
  # embeddings is ~1/eps of F.normalize (1e-12).
  B, C = 4, 5
  uniform = jnp.zeros((B, C))                     # a zero-initialised student: uniform softmax
  rng = _rng(14)
  zt = _f32(rng.normal(size=(B, C)))[0]
  y = jnp.asarray(rng.integers(0, C, B))
  dup = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])    # repeated and zero rows
  et = _f32(rng.normal(size=(B, 3)))[0]

  def total(zs, es):
    return (dkd.dkd_loss(zs, zt, y, alpha=1.0, beta=8.0, temperature=4.0)
            + dist.dist_loss(zs, zt, beta=1.0, gamma=1.0, temperature=4.0)
            + rkd.rkd_loss(es, et, distance_weight=25.0, angle_weight=50.0)
            + pkt.pkt_loss(es, et) + pefd.pefd_loss(es, et[:, :2]))

  value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(uniform, dup)
  assert np.isfinite(float(value))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  # the same with identical student and teacher (every term at its minimum)
  g = jax.jit(jax.grad(lambda e: rkd.rkd_loss(e, dup, distance_weight=1.0, angle_weight=1.0)
                       + pkt.pkt_loss(e, dup)))(dup)
  assert np.all(np.isfinite(np.asarray(g)))
