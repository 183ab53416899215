"""A runs axis under jax.vmap: independently initialised models, applied together == one by one."""

import numpy as np
import jax
import jax.numpy as jnp

from jkd import models


def test_vmapped_runs_equal_per_model_application():
  model = models.create("wrn10_1", num_classes=3)
  runs, shape = 3, (4, 8, 2)
  # Independent variables per run, stacked on a leading runs axis (numpy draws: no init compile).
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  rng = np.random.default_rng(0)
  v = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, (runs, *a.shape)), jnp.float32),
                   tree)
  x = jax.random.normal(jax.random.key(1), (runs, *shape))
  apply = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  (logits, feats), stats = jax.jit(jax.vmap(apply))(v, x)
  single = apply  # eager: reuses the op compiles of the other tests on this shape
  for r in range(runs):
    (want_logits, want_feats), want_stats = single(jax.tree.map(lambda a: a[r], v), x[r])
    np.testing.assert_allclose(logits[r], want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats[2][r], want_feats[2], rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(want_stats)):
      np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(logits[0], logits[1])

