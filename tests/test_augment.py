"""On-device time-series augmentations: shapes, invariants, label mixing."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jkd.engine import augment

B, L, C, K = 6, 40, 7, 3


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(B, L, C)), jnp.float32)
  y = jax.nn.one_hot(jnp.asarray(rng.integers(0, K, B)), K)
  return x, y


def cfg(**kw):
  c = augment.default_config()
  c.update(kw)
  return c


def test_all_off_is_identity_and_inactive(batch):
  x, y = batch
  c = cfg()
  assert not augment.is_active(c)
  xa, ya = augment.augment(jax.random.PRNGKey(0), x, y, c)
  np.testing.assert_array_equal(xa, x)
  np.testing.assert_array_equal(ya, y)


@pytest.mark.parametrize("kw", [dict(jitter=0.05), dict(scaling=0.1), dict(magnitude_warp=0.2),
                                dict(time_warp=0.2), dict(permutation=4),
                                dict(rotation=True, sensor_groups=(1, 4)), dict(mixup=0.2),
                                dict(cutmix=1.0)])
def test_each_augmentation_keeps_shapes_changes_data_and_is_deterministic(batch, kw):
  x, y = batch
  c = cfg(**kw)
  assert augment.is_active(c)
  fn = jax.jit(lambda k: augment.augment(k, x, y, c))
  xa, ya = fn(jax.random.PRNGKey(1))
  assert xa.shape == x.shape and ya.shape == y.shape
  assert not np.allclose(xa, x)
  np.testing.assert_allclose(ya.sum(-1), 1.0, atol=1e-6)
  xb, _ = fn(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(xa, xb)
  xc, _ = fn(jax.random.PRNGKey(2))
  assert not np.allclose(xa, xc)


def test_jitter_noise_has_requested_std():
  x = jnp.zeros((64, 100, 8))
  noise = augment.jitter(jax.random.PRNGKey(0), x, 0.05)
  assert abs(float(jnp.std(noise)) - 0.05) < 0.002


def test_scaling_multiplies_each_channel_by_one_factor(batch):
  x, _ = batch
  xa = augment.scaling(jax.random.PRNGKey(0), x[0], 0.1)
  ratio = np.asarray(xa / x[0])
  np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1], ratio.shape), rtol=1e-5)


def test_permutation_reorders_whole_segments_keeping_every_time_step(batch):
  x, _ = batch
  xi = x[0]
  xa = np.asarray(augment.permutation(jax.random.PRNGKey(3), xi, 4))
  # Every output row is an input row, each used once.
  src = [int(np.argmin(np.abs(np.asarray(xi) - row).sum(1))) for row in xa]
  assert sorted(src) == list(range(L))
  # Consecutive rows inside a segment stay consecutive: at most 3 jumps for 4 segments.
  assert sum(b != a + 1 for a, b in zip(src, src[1:])) <= 3


def test_time_warp_with_zero_strength_is_identity(batch):
  x, _ = batch
  np.testing.assert_allclose(augment.time_warp(jax.random.PRNGKey(0), x[0], 0.0), x[0], atol=1e-5)


def test_time_warp_keeps_end_points_and_stays_within_signal_range(batch):
  x, _ = batch
  xa = augment.time_warp(jax.random.PRNGKey(5), x[0], 0.3)
  np.testing.assert_allclose(np.asarray(xa)[[0, -1]], np.asarray(x[0])[[0, -1]], atol=1e-5)
  assert float(xa.max()) <= float(x[0].max()) + 1e-6


def test_rotation_preserves_norm_of_each_xyz_group_and_leaves_other_channels(batch):
  x, _ = batch
  xa = augment.rotate_groups(jax.random.PRNGKey(0), x[0], (1, 4))
  for s in (1, 4):
    np.testing.assert_allclose(jnp.linalg.norm(xa[:, s:s + 3], axis=1),
                               jnp.linalg.norm(x[0][:, s:s + 3], axis=1), rtol=1e-5)
  np.testing.assert_array_equal(xa[:, 0], x[0][:, 0])
  rot = augment.random_rotation(jax.random.PRNGKey(7))
  np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)
  assert abs(float(jnp.linalg.det(rot)) - 1.0) < 1e-5


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda(batch):
  x, y = batch
  xa, ya = augment.mixup(jax.random.PRNGKey(0), x, y, 0.4)
  for i in range(B):
    # Solve x_a = lam x_i + (1 - lam) x_j for some j with the label weights.
    lam = None
    for j in range(B):
      d = np.asarray(x[i] - x[j]).ravel()
      if np.abs(d).max() < 1e-6:
        continue
      cand = float(np.dot(np.asarray(xa[i] - x[j]).ravel(), d) / np.dot(d, d))
      if np.allclose(xa[i], cand * x[i] + (1 - cand) * x[j], atol=1e-5):
        lam, jj = cand, j
        break
    if lam is None:                              # paired with itself: unchanged
      np.testing.assert_allclose(xa[i], x[i], atol=1e-6)
      continue
    np.testing.assert_allclose(ya[i], lam * y[i] + (1 - lam) * y[jj], atol=1e-5)


def test_cutmix_label_weight_equals_fraction_of_time_replaced(batch):
  x, y = batch
  xa, ya = augment.cutmix(jax.random.PRNGKey(4), x, y, 1.0)
  for i in range(B):
    changed = np.any(np.asarray(xa[i]) != np.asarray(x[i]), axis=1)
    idx = np.flatnonzero(changed)
    if idx.size:
      assert idx.max() - idx.min() + 1 == idx.size          # one contiguous segment
    frac_kept = 1 - changed.mean()
    # The label weight of the example's own class is at least the kept fraction.
    assert float(ya[i] @ y[i]) >= frac_kept - 1e-6


def test_rotation_without_sensor_groups_is_a_clear_error(batch):
  x, y = batch
  with pytest.raises(ValueError, match="sensor_groups"):
    augment.augment(jax.random.PRNGKey(0), x, y, cfg(rotation=True))


def test_augment_vmaps_over_runs(batch):
  x, y = batch
  c = cfg(jitter=0.1, mixup=0.2)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  xs = jnp.stack([x] * 3)
  ys = jnp.stack([y] * 3)
  out, _ = jax.vmap(lambda k, a, b: augment.augment(k, a, b, c))(keys, xs, ys)
  single, _ = augment.augment(keys[1], x, y, c)
  np.testing.assert_allclose(out[1], single, atol=1e-6)
