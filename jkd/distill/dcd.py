"""DCD, discriminative and consistent representation distillation (Giakoumoglou & Stathaki, arXiv
2407.11802, 2024), on pooled embeddings; the lab's "DCD" row.

Source: giakoumoglou/distillers `distillers/DCD.py` (`DCDLoss`, `LearnableParams`; the same in
`cifar/distillers/DCD.py`) and `train_student.py` ('dcd': reads `feat[-1]`, the pooled embedding;
only the heads in the optimizer's list, see `learn_scale`; run as `-a 0 -b 1`, CE + 1 · DCD, or `-a 1 -b 1`
for DCD + KD: list 'kd' too). Per teacher k: `embed_s` Linear(d_s → feat_dim) and `embed_t`
Linear(d_t,k → feat_dim), PyTorch's default init (kernel and bias U(±1/sqrt(in))), and two scalars,
`tau` (init 1) and `b` (init 0): L = min(e^tau, max_tau) · cos(f_s, f_t) + b over the batch,
contrast (in-batch cross-entropy) + α · consistency (row/column softmax KL), `dcd_loss`.
The heads are TRAINABLE (with the student, by its optimizer) and dropped at inference. Several
teachers: Σ_k w_k L_k.

The scalars tau and b (`learn_scale`, static):
  False  (default, the authors' behaviour) fixed at `init_tau` / `init_bias`. `DCDLoss` makes
         them `nn.Parameter`s, but the authors' only DCD trainer (`imagenet/train_student.py`)
         appends just the criterion's `embed_s` and `embed_t` to `trainable_list`, whose
         parameters are all the optimizer sees: tau and b never move. Here they live in
         `batch_stats`, which the optimizer never sees (no gradient step, no weight decay).
  True   trained with the heads (in `params`, weight-decayed as PyTorch's SGD would), as the
         paper describes them ("learnable") and as jkd did before.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import Example, Needs, Term, TermError

Array = jax.Array


DCD_MAX_TAU = 10.0     # DCD: `DCDLoss(max_tau=10.0)`, the clamp of exp(tau)
_DCD_MASKED = -1e9     # a masked-out column's logit: exp underflows to 0, finite in masked rows


def dcd_loss(f_s: Array, f_t: Array, *, tau: Array, bias: Array, alpha: float | Array = 0.5,
             max_tau: float | Array = DCD_MAX_TAU, mask: Array | None = None) -> Array:
  """DCD's contrastive + consistency loss on the embedded student and teacher rows (B, D).

  `DCDLoss.forward`: ``a = normalize(f_s)``, ``b = normalize(f_t)`` (F.normalize), ``s = min(e^tau,
  max_tau)`` (``exp().clamp(0, max_tau)``: no gradient into tau above the bound),
  ``L = s · a bᵀ + bias`` (B, B; in-batch negatives, the positive on the diagonal);
  ``contrast = mean_i −log softmax_j(L)_ii`` (``losses.cross_entropy(L, arange(B))``) and
  ``consist = mean_i KL(q_i ‖ p_i)`` with ``p_i = softmax_j L_ij``, ``q_i = softmax_j L_ji``
  (``kl_div(log_softmax(L, 1), softmax(L, 0).t(), 'batchmean')``, gradient through both);
  returns ``contrast + alpha · consist``. `tau`, `bias`: the learnable scalars.

  Both inputs are outputs of the trainable heads (``embed_s``, ``embed_t``), so neither is under
  stop_gradient here: the caller stops the teacher's embedding before its head. `mask`: a
  masked-out example is dropped from every row and column (its logits are excluded from each
  softmax) and rows are averaged with weights w; for a 0/1 mask this is DCD on the real examples.
  """
  losses.check_same(f_s, f_t, "dcd_loss")
  n = f_s.shape[0]
  w = losses.mask_weights(mask, n)
  keep = w > 0
  pair = keep[:, None] & keep[None, :]
  a, b = losses.normalize_finite(f_s.reshape(n, -1)), losses.normalize_finite(f_t.reshape(n, -1))
  scale = jnp.exp(tau)
  scale = jnp.where(scale > max_tau, max_tau, scale)
  logits = jnp.matmul(a, b.T, precision=losses.HIGHEST) * scale + bias
  log_p = jax.nn.log_softmax(jnp.where(pair, logits, _DCD_MASKED), axis=1)
  log_q = jax.nn.log_softmax(jnp.where(pair, logits, _DCD_MASKED).T, axis=1)
  contrast = -jnp.diagonal(log_p)
  consist = jnp.sum(jnp.where(pair, jnp.exp(log_q) * (log_q - log_p), 0.0), axis=1)
  total = jnp.sum(w)
  row = jnp.where(keep, w * (contrast + alpha * consist), 0.0)
  return jnp.sum(row) / jnp.where(total > 0, total, 1.0)


def _real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


class DCD(Term):
  name = "dcd"
  source = ("Giakoumoglou & Stathaki, arXiv 2407.11802; giakoumoglou/distillers distillers/DCD.py "
            "(DCDLoss), train_student.py ('dcd')")
  defaults = {"weight": 1.0, "alpha": 0.5, "max_tau": DCD_MAX_TAU, "feat_dim": 128,
              "init_tau": 1.0, "init_bias": 0.0, "learn_scale": False}
  per_run = ("weight", "alpha", "max_tau")
  ranges = {"alpha": ">= 0", "max_tau": "> 0", "feat_dim": ">= 1"}

  def check(self, cfg, teachers, student, epochs):
    d = cfg.feat_dim
    if not _real(d) or not float(d).is_integer() or d < 1:
      raise TermError(f"loss.dcd.feat_dim={d!r} must be a positive integer (the authors use 128); "
                      "set --config.loss.dcd.feat_dim=128")
    for key in ("init_tau", "init_bias"):
      if not _real(cfg[key]) or not math.isfinite(cfg[key]):
        raise TermError(f"loss.dcd.{key}={cfg[key]!r} must be a finite number (the authors use "
                        f"{self.defaults[key]})")
    if not isinstance(cfg.learn_scale, bool):
      raise TermError(f"loss.dcd.learn_scale={cfg.learn_scale!r} must be True or False")

  def needs(self, cfg):
    return Needs(embedding=True)

  def init(self, cfg, key, student, teachers, info=None):
    d_s, dim = student.embedding.shape[-1], int(cfg.feat_dim)
    params, stats = {}, {}
    for i, t in enumerate(teachers):
      ks, kt = jax.random.split(jax.random.fold_in(key, i))
      d_t = t.embedding.shape[-1]
      init = lambda k, d: heads.torch_linear(d, dim).init(k, jnp.zeros((1, d), jnp.float32))
      params[str(i)] = {"embed_s": init(ks, d_s)["params"], "embed_t": init(kt, d_t)["params"]}
      scalars = {"tau": jnp.float32(cfg.init_tau), "b": jnp.float32(cfg.init_bias)}
      if cfg.learn_scale:
        params[str(i)] |= scalars
      else:
        stats[str(i)] = scalars
    return {"params": params, "batch_stats": stats}

  def loss(self, cfg, hp, batch):
    e_s, dim = batch.student.embedding, int(cfg.feat_dim)
    per = []
    for i, t in enumerate(batch.teachers):
      p, e_t = batch.params[str(i)], jax.lax.stop_gradient(t.embedding)
      s = p if cfg.learn_scale else batch.batch_stats[str(i)]
      f_s = heads.torch_linear(e_s.shape[-1], dim).apply({"params": p["embed_s"]}, e_s)
      f_t = heads.torch_linear(e_t.shape[-1], dim).apply({"params": p["embed_t"]}, e_t)
      per.append(dcd_loss(f_s, f_t, tau=s["tau"], bias=s["b"], alpha=hp["alpha"],
                                 max_tau=hp["max_tau"]))
    value = jnp.sum(batch.teacher_weights * jnp.stack(per))
    # Fixed scalars: handed back unchanged, so the step keeps them (a term returning no
    # batch_stats beside one that does would lose them).
    return value if cfg.learn_scale else (value, batch.batch_stats)


  def example(self):
    return Example(config={"init_tau": 2.0})   # e² between max_tau and its moved value: the clamp


TERM = DCD()
