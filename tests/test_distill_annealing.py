"""Annealing-KD (`jkd.distill.annealing`): the temperature schedule by hand, the phase-1 MSE against
numpy, the two phases through the objective."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import distill
from jkd.distill import Outputs, annealing
from jkd.distill import Context

from distill_setup import kd_config, per_run_hp
from numpy_ref import rng as _rng, close as _close


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z.astype(np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def test_annealing_phi_schedule_hand_values():
  # tau_max 10 over 20 phase-1 epochs: two epochs per temperature, T = 10, 10, 9, 9, ..., 1, 1.
  temps = [int(annealing.annealing_temperature(e, tau_max=10, phase1_epochs=20)) for e in range(22)]
  assert temps == [10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1]
  phis = [float(annealing.annealing_phi(e, tau_max=10, phase1_epochs=20)) for e in (0, 1, 2, 10, 19, 25)]
  _close(phis, [0.1, 0.1, 0.2, 0.6, 1.0, 1.0], rtol=1e-6)
  # Uneven split: tau_max 4 over 6 epochs: T = 4 - floor(4e/6) = 4, 4, 3, 2, 2, 1.
  temps = [int(annealing.annealing_temperature(e, tau_max=4, phase1_epochs=6)) for e in range(6)]
  assert temps == [4, 4, 3, 2, 2, 1]
  # Traced epoch under jit.
  phi = jax.jit(lambda e: annealing.annealing_phi(e, tau_max=10, phase1_epochs=20))(jnp.int32(5))
  _close(phi, 0.3, rtol=1e-6)
  with pytest.raises(ValueError, match="phase1_epochs"):
    annealing.annealing_phi(0, tau_max=10, phase1_epochs=5)


def test_annealing_kd_loss_matches_numpy_and_masks():
  rng = _rng(10)
  zs, zt = (rng.normal(size=(5, 4)).astype(np.float32) for _ in range(2))
  mask = np.array([1, 0, 1, 1, 0], np.float32)
  _close(annealing.annealing_kd_loss(jnp.asarray(zs), jnp.asarray(zt), 0.3),
         np.mean((zs - 0.3 * zt) ** 2))
  _close(annealing.annealing_kd_loss(jnp.asarray(zs), jnp.asarray(zt), 0.3, mask=jnp.asarray(mask)),
         np.mean((zs[mask > 0] - 0.3 * zt[mask > 0]) ** 2))
  g_t = jax.grad(lambda t: annealing.annealing_kd_loss(jnp.asarray(zs), t, 0.5))(jnp.asarray(zt))
  assert np.all(np.asarray(g_t) == 0)


def test_jafari_annealing_phases():
  """Phase 1: MSE(z_s, Φ(T)·Σ_k w_k z_k) with T stepping τ_max → 1; phase 2: CE (the whole
  schedule is the term)."""
  B, K = 6, 5
  r = np.random.default_rng(0)
  zs, z1, z2 = (r.normal(size=(B, K)).astype(np.float32) * s for s in (1, 2, 3))
  y = r.integers(0, K, B)
  c = kd_config(("annealing",), annealing={"tau_max": 4, "phase1_epochs": 8})
  c.loss.alpha = 0.25
  c.train.epochs = 10
  obj = jax.jit(distill.make_objective(c))
  teach = [Outputs(jnp.asarray(z)) for z in (z1, z2)]
  student = (jnp.asarray(zs), (jnp.zeros((B, 4)),))
  for epoch, temp in ((0, 4), (3, 3), (7, 1)):
    total, _, _ = obj(*student, y, per_run_hp(c), Context(epoch=jnp.int32(epoch), teachers=teach))
    phi = 1 - (temp - 1) / 4
    want = np.mean((zs - phi * (0.75 * z1 + 0.25 * z2)) ** 2)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
  total, _, _ = obj(*student, y, per_run_hp(c), Context(epoch=jnp.int32(8), teachers=teach))
  np.testing.assert_allclose(float(total), -np.mean(_log_softmax(zs)[np.arange(B), y]), rtol=1e-5)

