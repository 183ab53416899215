"""The KD step with augmentation: the teacher_outputs (teachers) sees the same augmented window as the
student, labels arrive mixed (soft, rows summing to 1) and the objective gets them."""

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np

from jkd.engine import augment, train as train_lib
from jkd import config as config_lib
from jkd.engine import state as state_lib
from jkd.data import normalize
import jkd.models


def test_guide_sees_augmented_batch_and_labels_are_mixed():
  c = config_lib.base(mc.ConfigDict({"name": "windows", "path": ""}))
  c.model.name = "wrn10_1"
  c.augment.update(jitter=0.1, mixup=0.4)
  model = jkd.models.create("wrn10_1", num_classes=3, ndim=1)
  r = np.random.default_rng(0)
  x = jnp.asarray(r.normal(size=(12, 16, 3)), jnp.float32)
  y = jnp.asarray(r.integers(0, 3, 12), jnp.int32)
  hp = {k: jnp.float32(v) for k, v in config_lib.numeric_hparams(c).items()}
  st = state_lib.from_variables(model.init(jax.random.PRNGKey(0), x[:2]),
                                train_lib.make_tx(c, hp))
  idx = jnp.arange(8)
  key = jax.random.PRNGKey(3)
  mean, std = jnp.zeros(3), jnp.ones(3) * 2
  xa, ya = augment.augment(jax.random.fold_in(key, 1), normalize.apply(x[idx], mean, std),
                           jax.nn.one_hot(y[idx], 3), c.augment)
  assert (ya.max(-1) < 1).any()                          # mixup really mixed some rows

  def teacher_outputs(aux, xb, raw, idx):
    # stands in for a teacher: a function of the augmented window, raw = before normalisation
    return xb * aux, raw

  def objective(logits, features, labels, hp, context):
    teacher, raw = context.teachers
    return jnp.mean(logits ** 2), {
        "label_err": jnp.max(jnp.abs(labels - ya)),
        "rowsum_err": jnp.max(jnp.abs(labels.sum(-1) - 1)),
        "teacher_err": jnp.max(jnp.abs(teacher - 2.0 * xa)) + 0.0 * teacher.shape[-1],
        "raw_err": jnp.max(jnp.abs(raw - (xa * std + mean)))}, None

  train_step = train_lib.Step(model, c, objective, 3, teacher_outputs)
  run = train_lib.Runs(key=key, train=jnp.arange(12), train_count=jnp.int32(12), mean=mean,
                       std=std, hp=hp, teachers=jnp.float32(2.0))
  step = jax.jit(lambda st: train_step(st, train_lib.Data(x, y), run,
                                       train_lib.StepBatch(idx, jnp.bool_(True), key),
                                       train_lib.Clock(jnp.int32(0), jnp.int32(0))))
  _, terms = step(st)
  assert float(terms["label_err"]) < 1e-6 and float(terms["rowsum_err"]) < 1e-6
  assert float(terms["teacher_err"]) < 1e-5 and float(terms["raw_err"]) < 1e-5
  assert np.isfinite(terms["loss"])
