"""Independent numpy references the loss tests compare against (float64), and their tolerances."""

import jax.numpy as jnp
import numpy as np

RTOL, ATOL = 2e-5, 1e-6


def rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                             atol=atol)


def f32(*arrays):
  return [jnp.asarray(np.asarray(a, np.float32)) for a in arrays]


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_softmax(z):
  return np.exp(np_log_softmax(z))


def np_kl_rows(p_t, log_p_t, log_p_s):
  """Σ_c p_t (log p_t − log p_s) per row; entries with p_t == 0 contribute 0 (torch kl_div)."""
  return np.sum(np.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), -1)


def np_kd(zs, zt, T, reduction="batchmean"):
  """Hinton KD, T² · mean over rows of KL(softmax(zt/T) ‖ softmax(zs/T)) ('mean': also / K)."""
  lps, lpt = np_log_softmax(zs / T), np_log_softmax(zt / T)
  kl = np.sum(np.exp(lpt) * (lpt - lps), -1)
  if reduction == "mean":
    kl = kl / zs.shape[-1]
  return T * T * np.mean(kl)


def np_gram(f, normalize=True):
  """The batch similarity f f^T of flattened rows, each row L2-normalised (SP)."""
  q = f.reshape(f.shape[0], -1).astype(np.float64)
  g = q @ q.T
  if normalize:
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
  return g
