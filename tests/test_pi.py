"""jkd.images.pi.persistence_image equals the lab's ripser + persim pipeline (docs/persistence_images.md).

The oracle, `lab_images`, calls ripser and persim exactly as the lab's notebook does: per window
and channel a scipy sparse matrix with the values on the diagonal and max(x_i, x_{i+1}) on
(i, i + 1), `ripser(D, maxdim=0, distance_matrix=True)`, the notebook's filters, the legacy
`PersImage(...).transform`, division by the max. ripser and persim are test-only dependencies.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from scipy import sparse
from scipy.stats import norm

from jkd import config as config_lib
from jkd import convert, images
from jkd.images import gaf, pi
from jkd.models import create

ripser = pytest.importorskip("ripser")
pytest.importorskip("persim")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
_image = jax.jit(pi.persistence_image,
                 static_argnames=("image_size", "spread", "birth_range", "threshold"))
_bars = jax.jit(pi.persistence_bars)


# ----------------------------------------------------------------------------- the oracle

def _sparse_filtration(x: np.ndarray) -> sparse.csr_matrix:
  n = len(x)
  rows = np.concatenate((np.arange(n - 1), np.arange(n)))
  cols = np.concatenate((np.arange(1, n), np.arange(n)))
  vals = np.concatenate((np.maximum(x[0:-1], x[1::]), x))
  return sparse.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()


def lab_diagram(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
  """The notebook's filtered diagram of one series (float64 (k, 2), ripser's order)."""
  dgm = ripser.ripser(_sparse_filtration(x), maxdim=0, distance_matrix=True)["dgms"][0]
  dgm = dgm[dgm[:, 1] - dgm[:, 0] > 1e-3, :]
  dgm = dgm[~np.isinf(dgm)[:, 1]]
  lifetime = np.ones(len(dgm))
  for h in range(len(dgm)):
    lifetime[h] = dgm[h][1] - dgm[h][0]
  return dgm[np.greater(lifetime, threshold)]


@functools.lru_cache(maxsize=None)
def _pers_image(image_size: int, spread, birth_range: tuple):
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")                       # PersImage is deprecated and verbose
    from persim import PersImage
    return PersImage(pixels=[image_size, image_size], spread=spread,
                     specs={"minBD": birth_range[0], "maxBD": birth_range[1]})


def lab_images(windows: np.ndarray, image_size: int = 64, spread=0.015,
               birth_range=(-1.0, 1.0), threshold: float = 0.01) -> np.ndarray:
  """(n, L, C) windows -> (n, C, S, S) float64 images, channels-first as the lab stores them."""
  pim = _pers_image(image_size, spread, tuple(birth_range))
  out = []
  for window in np.asarray(windows, np.float64):
    per_channel = []
    for ch in range(window.shape[1]):
      img = pim.transform(lab_diagram(window[:, ch].reshape(-1), threshold))
      if np.max(img) > 0:
        img = img / np.max(img)
      per_channel.append(img)
    out.append(np.asarray(per_channel))
  return np.asarray(out)


# ----------------------------------------------------------------------------- test windows

def _near_threshold_pairs() -> list[tuple[float, float]]:
  """float32 (birth, death) pairs whose difference sits at 0.01 within float32 rounding: the
  float32 difference equal to float32(0.01) with the exact one above and below 0.01, and the
  neighbours of float32(0.01)."""
  t_hi = np.float32(0.01)
  found = {}
  for b in np.float32(0.0013) + np.arange(400, dtype=np.float32) * np.float32(1.3e-5):
    d0 = np.float32(b + t_hi)
    for k in range(-3, 4):
      d = d0 + np.float32(k) * np.spacing(d0)
      s, exact = np.float32(d - b), float(d) - float(b)
      case = ("eq" if s == t_hi else "up" if s > t_hi else "down", exact > 0.01)
      found.setdefault(case, (float(b), float(d)))
  assert {("eq", True), ("eq", False), ("up", True), ("down", False)} <= set(found), found
  return list(found.values())


def adversarial_windows() -> np.ndarray:
  """(2, 100, C): ties, plateaus, constants, monotone, bars at the threshold, clipped values."""
  t = np.arange(100)
  rng = np.random.default_rng(7)
  walk = np.clip(np.cumsum(rng.normal(0, 0.08, 100)) + 0.5, 0, 1)
  walk[walk >= 1] = 0.99                                  # the lab's min-max clipping
  cols = [
      np.zeros(100), np.full(100, 0.3), np.linspace(0, 0.99, 100), np.linspace(0.99, 0, 100),
      np.tile([0.5, 0.51], 50),                           # p64 = 0.0100000000000000009, p32 < 0.01
      np.tile([0.0, 0.99], 50), np.tile([0.99, 0.0], 50),  # 49 finite bars: the bound
      np.round(0.5 + 0.45 * np.sin(t / 5), 1),            # quantised: plateaus and ties
      np.repeat([0.2, 0.6, 0.2, 0.8, 0.2, 0.5, 0.1, 0.9, 0.1, 0.4], 10),   # equal minima, plateaus
      walk, np.round(walk * 20) / 20,
      np.tile([0.3, 0.6, 0.3 + 1e-9, 0.6], 25),           # a tie only after rounding to float32
      np.tile([0.5, 0.5011, 0.5, 0.52], 25),              # bars between 1e-3 and the threshold
      np.where(t % 7 == 0, 0.0, np.where(t % 7 == 3, 0.99, 0.4)),
  ]
  for b, d in _near_threshold_pairs():
    cols.append(np.tile([b, d], 50))
  cols = np.stack(cols, 1)
  return np.stack([cols, cols[::-1]])                     # also the time reversal


def random_windows(n: int = 4, channels: int = 6, seed: int = 0) -> np.ndarray:
  """Uniform noise, random walks min-max scaled and clipped, noisy sines, coarse quantisation."""
  rng = np.random.default_rng(seed)
  t = np.arange(100)[None, :, None]
  noise = rng.random((n, 100, channels))
  walk = np.cumsum(rng.normal(size=(n, 100, channels)), 1)
  walk = (walk - walk.min(1, keepdims=True)) / np.ptp(walk, 1, keepdims=True) * 1.1 - 0.05
  walk = np.where(walk > 1, 0.99, np.clip(walk, 0, None))
  sine = 0.5 + 0.4 * np.sin(t / rng.uniform(2, 9, (n, 1, channels)))
  sine = sine + rng.normal(0, 0.03, noise.shape)
  quant = np.round(rng.random((n, 100, channels)) * 4) / 4
  return np.concatenate([noise, walk, sine, quant])


@functools.lru_cache(maxsize=None)
def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """name -> (windows (n, L, C) float64, the lab's images (n, S, S, C) channels-last)."""
  out = {}
  for name, x in (("random", random_windows()), ("adversarial", adversarial_windows())):
    out[name] = (x, lab_images(x).transpose(0, 2, 3, 1))
  return out


def _multiset(bars: np.ndarray) -> list[tuple[float, float]]:
  return sorted(map(tuple, np.asarray(bars, np.float64).reshape(-1, 2)))


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("case", ["random", "adversarial"])
def test_matches_lab_float32(case):
  x, want = _cases()[case]
  got = np.asarray(_image(jnp.asarray(x, jnp.float32)))
  assert got.shape == want.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  # Which channels are empty is decided exactly (thresholds, rounding to float32).
  np.testing.assert_array_equal(got.max(axis=(1, 2)) > 0, want.max(axis=(1, 2)) > 0)


@pytest.mark.parametrize("case", ["random", "adversarial"])
def test_matches_lab_float64(case):
  x, want = _cases()[case]
  with jax.enable_x64(True):
    got = np.asarray(_image(jnp.asarray(x, jnp.float64)))
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_the_threshold_trap_is_empty_as_in_the_lab():
  x = np.tile([0.5, 0.51], 50)[None, :, None]              # p64 > 0.01 but ripser's p32 < 0.01
  assert len(lab_diagram(x[0, :, 0])) == 0
  assert not np.asarray(_image(jnp.asarray(x, jnp.float32))).any()
  with jax.enable_x64(True):
    assert not np.asarray(_image(jnp.asarray(x))).any()


def test_bars_are_ripsers_finite_bars_as_a_multiset():
  rng = np.random.default_rng(3)
  for length in (1, 2, 7, 100):
    x = np.concatenate([rng.random((1, length, 12)) * 2 - 1,       # negative values too
                        np.round(rng.random((1, length, 12)) * 3) / 3], 2)
    birth, death = (np.asarray(a) for a in _bars(jnp.asarray(x, jnp.float32)))
    assert birth.shape == (1, pi.num_slots(length), 24)
    assert (death >= birth).all()
    for ch in range(24):
      dgm = ripser.ripser(_sparse_filtration(x[0, :, ch]), maxdim=0, distance_matrix=True)
      dgm = dgm["dgms"][0]
      assert np.isinf(dgm[:, 1]).sum() == 1                # the essential bar
      real = death[0, :, ch] > birth[0, :, ch]
      ours = np.stack([birth[0, real, ch], death[0, real, ch]], 1)
      assert _multiset(ours) == _multiset(dgm[np.isfinite(dgm[:, 1])]), (length, ch)


def test_bars_round_to_float32_in_float64_mode():
  x = np.tile([0.3, 0.6, 0.3 + 1e-9, 0.6, 0.2, 0.6], 5)[None, :, None]   # 0.3 and 0.3+1e-9 tie
  want = _bars(jnp.asarray(x, jnp.float32))
  with jax.enable_x64(True):
    got = _bars(jnp.asarray(x))
    assert got[0].dtype == jnp.float64
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w, np.float64))


@pytest.mark.parametrize("length", [1, 7])
def test_short_and_odd_windows_match_lab(length):
  x = np.random.default_rng(length).random((2, length, 3))
  want = lab_images(x).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(_image(jnp.asarray(x, jnp.float32)), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kw, x64", [
    ({"image_size": 20, "spread": 0.05, "birth_range": (-0.5, 2.0), "threshold": 0.0}, True),
    ({"image_size": 9, "spread": None, "birth_range": (0.5, 1.0), "threshold": 0.05}, False),
])
def test_other_grids_match_lab(kw, x64):
  x = random_windows(1, 3, seed=5)
  want = lab_images(x, **kw).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(_image(jnp.asarray(x, jnp.float32), **kw), want, rtol=0, atol=1e-4)
  if x64:
    with jax.enable_x64(True):
      np.testing.assert_allclose(_image(jnp.asarray(x), **kw), want, rtol=0, atol=1e-6)


def test_orientation_and_the_non_tiling_grid_by_hand():
  # One finite bar (0.2, 0.7): p = 0.5. persim's legacy grid: birth bins [a_k, a_k + 1/64],
  # a_k = -1 + 2k/63; persistence bins [l/63, l/63 + 1/64]; row r is persistence bin 63 - r.
  x = np.array([0.2, 0.7, 0.1])[None, :, None]
  got = np.asarray(_image(jnp.asarray(x, jnp.float32)))[0, :, :, 0]
  b, p = np.float64(np.float32(0.2)), np.float64(np.float32(0.7)) - np.float64(np.float32(0.2))
  a, c = -1 + 2 * np.arange(64) / 63, np.arange(64) / 63
  mass = lambda lo, centre: norm.cdf(lo + 1 / 64, centre, 0.015) - norm.cdf(lo, centre, 0.015)
  want = np.outer(mass(c, p)[::-1], mass(a, b))
  np.testing.assert_allclose(got, want / want.max(), rtol=0, atol=1e-5)
  assert np.unravel_index(got.argmax(), got.shape) == (63 - 31, 38)   # 0.5 in bin 31; 0.2 in a gap


def test_empty_images_are_zeros_never_nan():
  x = np.stack([np.zeros(50), np.full(50, 0.7), np.linspace(0, 1, 50), np.tile([0.5, 0.5001], 25)],
               1)[None]
  got = np.asarray(_image(jnp.asarray(x, jnp.float32)))
  assert np.isfinite(got).all() and not got.any()


def test_vmaps_over_runs_and_keeps_batches_independent():
  x = jnp.asarray(random_windows(1, 3, seed=1)[:, :30].reshape(2, 2, 30, 3), jnp.float32)
  per_run = jnp.stack([_image(r) for r in x])
  np.testing.assert_allclose(jax.jit(jax.vmap(pi.persistence_image))(x), per_run, rtol=0,
                             atol=1e-6)
  one = _image(x[0, :1])                                   # a batch of one: no grouping
  np.testing.assert_allclose(one, per_run[0, :1], rtol=0, atol=1e-6)


def test_rejects_bad_arguments():
  x = jnp.zeros((2, 10, 3))
  with pytest.raises(ValueError, match="batch, length, channels"):
    pi.persistence_image(x[0])
  with pytest.raises(ValueError, match="image_size"):
    pi.persistence_image(x, 0)
  with pytest.raises(ValueError, match="maxBD"):
    pi.persistence_image(x, birth_range=(-1.0, 0.0))
  with pytest.raises(ValueError, match="spread"):
    pi.persistence_image(x, spread=-0.1)


# ----------------------------------------------------------------------------- model input

def _model_cfg(**kw) -> mc.ConfigDict:
  m = config_lib.base().model
  m.update(kw)
  return m


def test_image_input_gaf_pi_and_signals():
  raw = jnp.asarray(random_windows(1, 3, seed=2)[:2], jnp.float32)
  x = (raw - 0.5) / 0.2                                    # normalised windows
  assert images.image_input(_model_cfg(ndim=1), x, raw) is x
  factors = images.image_input(_model_cfg(ndim=2, image_size=16), x, raw)
  assert isinstance(factors, gaf.GafFactors)
  np.testing.assert_allclose(factors.dense(), gaf.gramian_angular_field(x, 16), atol=1e-6)
  cfg = _model_cfg(ndim=2, image="pi", image_size=16)
  cfg.pi.threshold = 0.02
  got = images.image_input(cfg, x, raw)
  want = pi.persistence_image(raw, 16, spread=0.015, birth_range=(-1.0, 1.0), threshold=0.02)
  np.testing.assert_array_equal(got, want)                 # from the raw windows, not x
  with pytest.raises(ValueError, match="raw"):
    images.image_input(cfg, x)


def test_train_model_input_makes_pis_from_the_raw_windows():
  from jkd.engine import train
  config = config_lib.base()
  config.model.update(ndim=2, image="pi", image_size=16)
  raw = jnp.asarray(random_windows(1, 3, seed=4)[:2], jnp.float32)
  mean, std = jnp.full(3, 0.4), jnp.full(3, 0.25)
  got = train.model_input(config, raw, mean, std)
  np.testing.assert_array_equal(got, pi.persistence_image(raw, 16))


def test_config_validates_model_image():
  c = config_lib.load_file(os.path.join(os.path.dirname(__file__), "..", "configs", "watch.py"))
  assert c.model.image == "gaf" and c.model.pi.to_dict() == {
      "spread": 0.015, "birth_range": (-1.0, 1.0), "threshold": 0.01}
  config_lib.validate(c)
  c.model.image = "persistence"
  with pytest.raises(config_lib.ConfigError, match="model.image"):
    config_lib.validate(c)


# ----------------------------------------------------------------------------- lab teachers

def test_lab_pi_teacher_gives_its_logits_on_jkd_images():
  """A lab-format 2-D WRN (torch checkpoint, channels-first images) on jkd's channels-last PIs
  gives the logits torch gave on the lab's ripser + persim images (fixture from
  `fixtures/make_pi_fixture.py`), and the same as jkd's model on the lab's images."""
  ref = np.load(os.path.join(FIXTURES, "pi_wrn10_1_2d.npz"))
  variables, info = convert.load_torch_wrn(os.path.join(FIXTURES, "wrn10_1_2d.pth.tar"),
                                           return_info=True)
  model = create(info.model, num_classes=info.num_classes, ndim=2)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  ours = _image(jnp.asarray(ref["windows"], jnp.float32))
  np.testing.assert_allclose(apply(variables, ours), ref["logits"], rtol=0, atol=1e-5)
  # The check has the power to see a wrong orientation (this net is not very sensitive: ~3e-3).
  for wrong in (ours[:, ::-1], ours.transpose(0, 2, 1, 3), ours[..., ::-1]):
    assert np.abs(apply(variables, wrong) - ref["logits"]).max() > 1e-3
  lab = lab_images(ref["windows"])                         # (n, C, 64, 64), as the lab saves them
  np.testing.assert_allclose(np.asarray(ours), lab.transpose(0, 2, 3, 1), rtol=0, atol=1e-4)
  np.testing.assert_allclose(apply(variables, ours),
                             apply(variables, jnp.asarray(lab.transpose(0, 2, 3, 1), jnp.float32)),
                             rtol=0, atol=1e-4)
