"""jkd.images.gaf.gramian_angular_field matches pyts' GramianAngularField and hand-computed fields."""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyts.utils import segmentation

from jkd.images import gaf
from jkd.images.gaf import gramian_angular_field, output_size, paa_bounds, paa_matrix

# pyts' own fields (importing pyts.image takes a minute of numba compiles); see the script there.
FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "gaf_pyts.npz"))
CASES = sorted(k.split("/")[0] for k in FIXTURE.files if k.endswith("/x"))


def test_fixture_covers_the_required_cases():
  assert {"lab_gasf", "lab_gadf", "divisible", "no_paa", "short", "fraction", "range_upper",
          "range_inner", "no_rescale", "overlapping", "offset"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_matches_pyts(case):
  x, want = FIXTURE[f"{case}/x"], FIXTURE[f"{case}/gaf"]
  args = ast.literal_eval(str(FIXTURE[f"{case}/args"]))
  size = args.pop("image_size")
  got = np.asarray(gramian_angular_field(jnp.asarray(x), size, **args))
  s = output_size(x.shape[1], size)
  assert got.shape == want.shape == (x.shape[0], s, s, x.shape[2]) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_paa_bounds_are_pyts_segmentation():
  for length in range(2, 130):
    for size in range(1, length):
      for overlapping in (False, True):
        window = -(-length // size)
        start, end, _ = segmentation(length, window, overlapping, size)
        got = paa_bounds(length, size, overlapping)
        np.testing.assert_array_equal(got[0], start)
        np.testing.assert_array_equal(got[1], end)


def test_paa_matrix_by_hand():
  # linspace(0, 5, 3) = [0, 2.5, 5] -> windows [0, 2) and [2, 5).
  np.testing.assert_allclose(np.arange(5.0) @ paa_matrix(5, 2), [0.5, 3.0])
  np.testing.assert_array_equal(paa_matrix(4, 4), np.eye(4))


def test_hand_computed_fields():
  x = jnp.asarray([0.0, 1.0, 2.0])[None, :, None]     # cos φ = [-1, 0, 1], sin φ = [0, 1, 0]
  gasf = [[1, 0, -1], [0, -1, 0], [-1, 0, 1]]
  gadf = [[0, 1, 0], [-1, 0, 1], [0, -1, 0]]
  np.testing.assert_allclose(gramian_angular_field(x, 3)[0, :, :, 0], gasf, atol=1e-6)
  np.testing.assert_allclose(gramian_angular_field(x, 3, method="difference")[0, :, :, 0], gadf,
                             atol=1e-6)


def test_constant_channel_maps_to_lower_bound():
  x = jnp.full((1, 100, 2), 0.3).at[:, :, 1].set(-7.0)
  np.testing.assert_array_equal(gramian_angular_field(x, 64), np.ones((1, 64, 64, 2)))
  np.testing.assert_array_equal(gramian_angular_field(x, 64, method="d"), np.zeros((1, 64, 64, 2)))
  # cos φ = -0.5, sin φ = sqrt(0.75): GASF = 0.25 - 0.75.
  np.testing.assert_allclose(gramian_angular_field(x, 64, sample_range=(-0.5, 0.5)), -0.5,
                             atol=1e-6)


def test_jit_and_vmap_agree_with_eager():
  x = np.random.default_rng(0).normal(size=(2, 3, 100, 4))           # (runs, B, L, C)
  x = jnp.asarray(x, jnp.float32)
  fn = lambda x: gramian_angular_field(x, 64)
  eager = np.stack([fn(x[0]), fn(x[1])])
  np.testing.assert_allclose(jax.jit(jax.vmap(fn))(x), eager, rtol=0, atol=1e-6)


def test_image_batches_write_each_batch_into_the_last_ones_memory():
  rng = np.random.default_rng(1)
  xs = [jnp.asarray(rng.normal(size=(3, 40, 2)), jnp.float32) for _ in range(3)]
  images = gaf.image_batches(8, method="difference")
  field = jax.jit(lambda x: gramian_angular_field(x, 8, method="difference"))
  out = jnp.zeros((3, 8, 8, 2))
  for x in xs:
    previous, out = out, images(x, out)
    assert previous.is_deleted()                       # donated: its memory holds `out` now
    np.testing.assert_array_equal(out, field(x))
  alias = images.lower(xs[0], out).compile().as_text().splitlines()[0]
  assert "input_output_alias={ {}: (1, {}" in alias


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 101}, "image_size"),
    ({"image_size": 1.5}, "image_size"),
    ({"image_size": 64, "method": "sum"}, "method"),
    ({"image_size": 64, "sample_range": (1.0, -1.0)}, "sample_range"),
    ({"image_size": 64, "sample_range": (-2.0, 1.0)}, "sample_range"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gramian_angular_field(jnp.zeros((1, 100, 1)), **kwargs)


def test_needs_channels_last_windows():
  with pytest.raises(ValueError, match="batch, length, channels"):
    gramian_angular_field(jnp.zeros((100, 3)), 64)


@pytest.mark.parametrize("method", ["summation", "difference"])
def test_factors_hold_exactly_the_images(method):
  x = np.random.default_rng(5).normal(size=(3, 40, 4)).astype(np.float32)
  factors = gaf.gaf_factors(x, 16, method=method)
  assert factors.shape == (3, 16, 16, 4) and factors.ndim == 4
  assert factors.rows.shape == factors.cols.shape == (3, 16, 2, 4)
  np.testing.assert_array_equal(factors.dense(), gaf.gramian_angular_field(x, 16, method=method))
  np.testing.assert_array_equal(gaf.as_dense(factors), factors.dense())
