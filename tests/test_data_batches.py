"""batch_indices / eval_batches: permutations of the real entries, masks, determinism, vmap."""

import jax
import jax.numpy as jnp
import numpy as np

from jkd.data.folds import batch_indices, eval_batches

_IDX = np.array([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 0, 0],
                 [30, 31, 32, 33, 34, 35, 36, 0, 0, 0, 0, 0]], np.int32)
_COUNT = np.array([10, 7], np.int32)


def _epoch(key, row, batch_size=3, num_batches=4):
  return jax.jit(batch_indices, static_argnums=(3, 4))(key, _IDX[row], _COUNT[row], batch_size,
                                                       num_batches)


def test_batches_are_a_permutation_of_the_real_entries():
  indices, mask = _epoch(jax.random.key(0), 0)
  indices, mask = np.asarray(indices), np.asarray(mask)
  assert indices.shape == (4, 3) and indices.dtype == np.int32
  assert mask.tolist() == [True, True, True, False]  # 10 // 3 = 3 full batches
  drawn = indices[mask].reshape(-1)
  assert len(set(drawn.tolist())) == 9 and set(drawn.tolist()) <= set(range(10, 20))
  assert set(indices.reshape(-1).tolist()) <= set(_IDX[0].tolist())  # masked batch still valid


def test_padding_is_never_drawn_and_mask_follows_count():
  for seed in range(5):
    indices, mask = _epoch(jax.random.key(seed), 1, batch_size=2, num_batches=5)
    indices, mask = np.asarray(indices), np.asarray(mask)
    assert mask.tolist() == [True, True, True, False, False]  # 7 // 2 = 3
    assert set(indices[mask].reshape(-1).tolist()) <= set(range(30, 37))
    assert len(set(indices[mask].reshape(-1).tolist())) == 6


def test_deterministic_per_key_and_different_across_keys():
  a, _ = _epoch(jax.random.key(1), 0)
  b, _ = _epoch(jax.random.key(1), 0)
  c, _ = _epoch(jax.random.key(2), 0)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_vmap_over_runs_matches_single_runs():
  keys = jax.random.split(jax.random.key(3), 2)
  fn = jax.jit(jax.vmap(batch_indices, in_axes=(0, 0, 0, None, None)), static_argnums=(3, 4))
  indices, mask = fn(keys, jnp.asarray(_IDX), jnp.asarray(_COUNT), 3, 4)
  for run in range(2):
    single, single_mask = _epoch(keys[run], run)
    np.testing.assert_array_equal(indices[run], single)
    np.testing.assert_array_equal(mask[run], single_mask)
  assert np.asarray(mask).tolist() == [[True] * 3 + [False], [True] * 2 + [False] * 2]


def test_eval_batches_cover_every_real_entry_once():
  fn = jax.vmap(eval_batches, in_axes=(0, 0, None))
  indices, mask = fn(jnp.asarray(_IDX), jnp.asarray(_COUNT), 5)
  indices, mask = np.asarray(indices), np.asarray(mask)
  assert indices.shape == mask.shape == (2, 3, 5)
  for run in range(2):
    assert sorted(indices[run][mask[run]].tolist()) == _IDX[run, :_COUNT[run]].tolist()
    assert mask[run].sum() == _COUNT[run]
  empty_idx, empty_mask = eval_batches(np.zeros(0, np.int32), 0, 4)
  assert empty_idx.shape == empty_mask.shape == (0, 4)
