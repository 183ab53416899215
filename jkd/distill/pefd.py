"""PEFD, feature distillation via a projector ensemble (Chen et al., NeurIPS 2022), on pooled
embeddings. (Not the lab's "projection" row: that is `jkd.distill.projector`.)

Source: chenyd7/PEFD `train_student.py` (`--distill ours`, run as `-a 0 -b 25`: CE + 25 · L, no
KD term), `helper/loops.py` (`train_distill`) and `models/util.py: Reg`. Per teacher, `projectors`
(3) independent Linear(d_s → d_t) heads with PyTorch's default init (kernel and bias
U(±1/sqrt(d_s))), each followed by ReLU and averaged: P(f_s) = mean_k ReLU(W_k f_s + b_k);
L = mean_i (1 − cos(f_t,i, P(f_s)_i)), the norms without eps. The projectors are TRAINABLE (with
the student, by its optimizer) and dropped at inference; the authors' fourth, never-used `Reg` is
not built. Several teachers: one ensemble each, Σ_k w_k L_k.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import Needs, Term, TermError

Array = jax.Array


def pefd_loss(f_s_projected: Array, f_t: Array, mask: Array | None = None) -> Array:
  """PEFD ``mean_i (1 − cos(f_t,i, f̂_s,i))`` with f̂_s the projector-ensemble output (B, D).

  chenyd7/PEFD helper/loops.py: the cosine has no eps (weight 25 outside). A zero vector, for
  which the authors' code gives NaN, has cosine 0 here.
  """
  losses.check_same(f_s_projected, f_t, "pefd_loss")
  f_t = jax.lax.stop_gradient(f_t)
  a, b = f_s_projected.reshape(f_t.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
  cos = losses.safe_div(jnp.sum(a * b, axis=-1), losses.safe_norm(a, -1, False) * losses.safe_norm(b, -1, False))
  return losses.masked_mean(1.0 - cos, mask)


def project(params: dict, f_s: jax.Array, d_t: int) -> jax.Array:
  """The ensemble's output mean_k ReLU(Linear_k(f_s)), (B, d_t), from one teacher's params."""
  lin = heads.torch_linear(f_s.shape[-1], d_t)
  outs = [jax.nn.relu(lin.apply({"params": params[str(j)]}, f_s)) for j in range(len(params))]
  return sum(outs) / len(outs)


class PEFD(Term):
  name = "pefd"
  source = "Chen et al., NeurIPS 2022; chenyd7/PEFD helper/loops.py ('ours'), models/util.py"
  defaults = {"weight": 25.0, "projectors": 3}
  per_run = ("weight",)

  def check(self, cfg, teachers, student, epochs):
    q = cfg.projectors
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not float(q).is_integer() or q < 1:
      raise TermError(f"loss.pefd.projectors={q!r} must be a positive integer (the authors use 3); "
                      "set --config.loss.pefd.projectors=3")

  def needs(self, cfg):
    return Needs(embedding=True)

  def init(self, cfg, key, student, teachers, info=None):
    d_s, q = student.embedding.shape[-1], int(cfg.projectors)
    x = jnp.zeros(student.embedding.shape, jnp.float32)
    params = {}
    for i, t in enumerate(teachers):
      lin, ki = heads.torch_linear(d_s, t.embedding.shape[-1]), jax.random.fold_in(key, i)
      params[str(i)] = {str(j): lin.init(jax.random.fold_in(ki, j), x)["params"] for j in range(q)}
    return {"params": params, "batch_stats": {}}

  def loss(self, cfg, hp, batch):
    f_s = batch.student.embedding
    per = jnp.stack([pefd_loss(project(batch.params[str(i)], f_s, t.embedding.shape[-1]),
                                      t.embedding) for i, t in enumerate(batch.teachers)])
    return jnp.sum(batch.teacher_weights * per)


TERM = PEFD()
