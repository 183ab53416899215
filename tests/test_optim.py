"""Schedules by epoch against hand values; optimisers against PyTorch's update formulas in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jkd import config as config_lib
from jkd.engine import optim


def _cfg(**kw):
  c = config_lib.base().optim
  c.update(kw)
  return c


def _factors(cfg, epochs):
  return np.array([float(optim.lr_factor(cfg, e, epochs)) for e in range(epochs)])


def test_lab_schedule_200_epochs():
  lr = 0.05 * _factors(_cfg(schedule="lab"), 200)
  # int(200/18) = 11, int(200/3) = 66, int(400/3) = 133
  expected = np.array([0.05] * 11 + [0.01] * 55 + [0.001] * 67 + [1e-4] * 67)
  np.testing.assert_allclose(lr, expected, rtol=1e-6)


def test_lab_schedule_short_run_skips_first_phase():
  lr = 0.05 * _factors(_cfg(schedule="lab"), 12)   # boundaries 0, 4, 8
  np.testing.assert_allclose(lr, [0.01] * 4 + [0.001] * 4 + [1e-4] * 4, rtol=1e-6)


def test_step_multistep_cosine_warmup():
  np.testing.assert_allclose(_factors(_cfg(schedule="step", step_size=2, gamma=0.5), 5),
                             [1, 1, 0.5, 0.5, 0.25])
  np.testing.assert_allclose(_factors(_cfg(schedule="multistep", milestones=(1, 3), gamma=0.2), 5),
                             [1, 0.2, 0.2, 0.04, 0.04], rtol=1e-6)
  np.testing.assert_allclose(_factors(_cfg(schedule="cosine"), 4),
                             [0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)], rtol=1e-6)
  np.testing.assert_allclose(_factors(_cfg(schedule="constant", warmup_epochs=4.0), 6),
                             [0.25, 0.5, 0.75, 1, 1, 1])


def _hp(cfg):
  return {f"optim.{k}": jnp.float32(v) for k, v in cfg.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_coupled_weight_decay_matches_torch_formula(nesterov):
  cfg = _cfg(name="sgd", momentum=0.9, weight_decay=1e-2, nesterov=nesterov)
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(5,)).astype(np.float32)
  grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(4)]
  lr = 0.1
  got = _run(optim.make(cfg, _hp(cfg), jnp.float32(lr)), {"w": jnp.asarray(p0)},
             [{"w": jnp.asarray(g)} for g in grads])
  # torch.optim.SGD: d = g + wd p; buf = m buf + d (buf = d at step 1); d = d + m buf if nesterov
  # else buf; p -= lr d
  p, buf = p0.astype(np.float64), None
  for g, out in zip(grads, got):
    d = g + 1e-2 * p
    buf = d if buf is None else 0.9 * buf + d
    step = d + 0.9 * buf if nesterov else buf
    p = p - lr * step
    np.testing.assert_allclose(np.asarray(out["w"]), p, rtol=1e-5, atol=1e-6)


def test_adam_coupled_and_adamw_decoupled():
  rng = np.random.default_rng(1)
  p0 = rng.normal(size=(4,)).astype(np.float32)
  grads = [rng.normal(size=(4,)).astype(np.float32) for _ in range(3)]
  lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
  for name in ("adam", "adamw"):
    cfg = _cfg(name=name, weight_decay=wd)
    got = _run(optim.make(cfg, _hp(cfg), jnp.float32(lr)), {"w": jnp.asarray(p0)},
               [{"w": jnp.asarray(g)} for g in grads])
    p, m, v = p0.astype(np.float64), 0.0, 0.0
    for t, (g, out) in enumerate(zip(grads, got), 1):
      d = g + wd * p if name == "adam" else g
      m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
      upd = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
      p = p - lr * upd - (lr * wd * p if name == "adamw" else 0.0)
      np.testing.assert_allclose(np.asarray(out["w"]), p, rtol=1e-5, atol=1e-6)


def test_backbone_frozen_or_slower():
  params = {"conv": {"kernel": jnp.ones(3)}, "fc": {"kernel": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  for mult in (0.0, 0.1):
    cfg = _cfg(name="sgd", weight_decay=0.0, backbone_lr_mult=mult, head="fc")
    (out,) = _run(optim.make(cfg, _hp(cfg), jnp.float32(0.5)), params, [grads])
    np.testing.assert_allclose(out["fc"]["kernel"], 1 - 0.5)
    np.testing.assert_allclose(out["conv"]["kernel"], 1 - 0.5 * mult, rtol=1e-6)
