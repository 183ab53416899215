"""CRD, contrastive representation distillation (Tian et al., ICLR 2020), NCE with memory banks.

Source: RepDistiller (HobbitLong/RepDistiller) `crd/criterion.py` (`CRDLoss`, `Embed`,
`ContrastLoss`), `crd/memory.py` (`ContrastMemory`) and `dataset/cifar100.py`
(`CIFAR100InstanceSample`, mode 'exact'); defaults from `train_student.py` (feat_dim 128, nce_k
16384, nce_t 0.07, nce_m 0.5, β 0.8).

Per teacher k: the student's and the teacher's pooled embeddings go through their own `Embed`
heads (Linear → 128, L2-normalised), both TRAINABLE; two memory banks of N × 128 (N = the windows
of the dataset `x`, indexed by dataset index; only training windows are ever read or written)
hold the student's and the teacher's embeddings, U(−b, b) at init, NON-TRAINABLE (batch_stats).
Each sample is scored against the OTHER bank at its own index (the positive) and at `nce_k`
negatives: `exp(<memory, e> / T) / Z`, with each Z estimated on the run's first step as
mean(scores) · n and then frozen (state). The loss is the NCE of Eq. 18 with Pn = 1/n, for the
student's and for the teacher's scores; after scoring both banks move to
normalize(m · memory + (1 − m) · e) at the batch's indices. Teachers add up by their weights.
n is the run's number of training windows (the authors' `n_data`, the size of their memory).

Negatives ('exact'): drawn uniformly, without replacement, from the run's training windows of
other classes than the sample's (its label in `y`; the dataset label even under mixup). Jittable:
every entry of the run's training-index pool gets a uniform key, entries of the sample's class
(and the pool's padding) get key 2, and the `nce_k` smallest keys (`lax.top_k`) are the
negatives; when a class has fewer than `nce_k` other-class windows the negatives are drawn
with replacement from them, as the authors' `np.random.choice(replace=True)`.

Everything (heads, banks, Z) is dropped at inference. The banks are run state like BatchNorm
statistics: checkpointed, and copied into `best`: 2 · teachers · N · feat_dim floats per run. `nce_k` must be at most the training
windows of every fold (it is static: the scores are (B, nce_k + 1)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import Example, Needs, Term, TermError

Array = jax.Array


CRD_EPS = 1e-7           # CRD: RepDistiller crd/criterion.py `eps`


def crd_memory_init_bound(feat_dim: int) -> float:
  """The memory banks' init bound ``1 / sqrt(feat_dim / 3)`` (U(−b, b), crd/memory.py)."""
  return 1.0 / math.sqrt(feat_dim / 3)


def crd_memory_init(key: Array, num_data: int, feat_dim: int = 128) -> Array:
  """One memory bank (num_data, feat_dim) ~ U(−b, b), b = :func:`crd_memory_init_bound`."""
  b = crd_memory_init_bound(feat_dim)
  return jax.random.uniform(key, (num_data, feat_dim), jnp.float32, -b, b)


def crd_scores(memory: Array, contrast_idx: Array, emb: Array, *,
               temperature: float | Array) -> Array:
  """``exp(<memory[contrast_idx], emb> / T)`` (B, K+1), before the division by Z.

  `memory` (N, D) is a constant (``.detach()`` in `ContrastMemory`); `contrast_idx` (B, K+1) has the
  positive in column 0; `emb` (B, D). In CRD the student embedding is scored against the TEACHER
  memory (`memory_v2`) and vice versa. T = 0.07 there.
  """
  contrast_idx = jnp.asarray(contrast_idx)
  if contrast_idx.ndim != 2 or contrast_idx.shape[0] != emb.shape[0]:
    raise ValueError(f"crd_scores: contrast_idx must be (batch, K+1) = ({emb.shape[0]}, K+1), got "
                     f"{contrast_idx.shape}.")
  weight = jax.lax.stop_gradient(memory)[contrast_idx]                                # (B, K+1, D)
  return jnp.exp(jnp.einsum("bkd,bd->bk", weight, emb, precision=losses.HIGHEST) / temperature)


def crd_estimate_z(scores: Array, *, num_data: int | Array, mask: Array | None = None) -> Array:
  """CRD's normalisation constant ``Z = mean(scores) · N``, estimated once (first batch), constant.

  With `mask`, the mean is over the real examples' rows.
  """
  per_example = jnp.mean(jax.lax.stop_gradient(scores), axis=-1)
  return losses.masked_mean(per_example, mask) * num_data


def crd_nce_loss(scores: Array, *, num_data: int | Array, eps: float = CRD_EPS,
                 mask: Array | None = None) -> Array:
  """CRD's NCE loss (Eq. 18), RepDistiller `ContrastLoss`, for normalised scores ``x`` (B, K+1).

  Column 0 is the positive. With ``Pn = 1 / N`` and ``m = K``:
  ``−[log(x_0 / (x_0 + m Pn + eps)) + Σ_{k≥1} log(m Pn / (x_k + m Pn + eps))]``, averaged over
  (masked) examples. ``L_CRD = loss(out_s) + loss(out_t)`` (weight 0.8 outside).
  """
  m = scores.shape[1] - 1
  noise = m / num_data
  log_d1 = jnp.log(scores[:, 0] / (scores[:, 0] + noise + eps))
  log_d0 = jnp.log(noise / (scores[:, 1:] + noise + eps))
  return losses.masked_mean(-(log_d1 + jnp.sum(log_d0, axis=-1)), mask)


def crd_memory_update(memory: Array, idx: Array, emb: Array, momentum: float | Array = 0.5, *,
                      mask: Array | None = None) -> Array:
  """``memory[idx] ← normalize(m · memory[idx] + (1 − m) · emb)``; returns the new memory.

  As `ContrastMemory.forward` (no gradient; ``x / ‖x‖`` without eps — a zero vector stays 0 here).
  Call it after scoring. Repeated indices in one batch: which write wins is unspecified (as with
  `index_copy_`). With `mask`, masked-out rows write nothing.
  """
  idx = jnp.asarray(idx)
  emb = jax.lax.stop_gradient(emb)
  pos = memory[idx] * momentum + emb * (1.0 - momentum)
  updated = losses.safe_div(pos, jnp.sqrt(jnp.sum(pos * pos, axis=-1, keepdims=True)))
  if mask is None:
    return memory.at[idx].set(updated)
  keep = losses.check_mask(mask, idx.shape[0]) > 0
  idx = jnp.where(keep, idx, memory.shape[0])          # out of bounds: dropped
  return memory.at[idx].set(updated, mode="drop")


def negatives(key, labels, pool, pool_count, all_labels, k: int):
  """(B, k) dataset indices: for each sample, `k` training windows of other classes than its
  `labels` entry, uniform without replacement (with replacement if fewer than `k` exist)."""
  n = pool.shape[0]
  if k > n:
    raise TermError(f"loss.crd.nce_k={k} exceeds the run's {n} training windows; lower it")
  valid = (jnp.arange(n) < pool_count)[None, :] & (all_labels[pool][None, :] != labels[:, None])
  ku, kr = jax.random.split(key)
  u = jnp.where(valid, jax.random.uniform(ku, valid.shape), 2.0)
  _, order = jax.lax.top_k(-u, k)                                  # other-class entries first
  m = jnp.sum(valid, axis=1)
  again = jax.random.randint(kr, (labels.shape[0], k), 0, jnp.maximum(m, 1)[:, None])
  pos = jnp.where((m >= k)[:, None], jnp.arange(k)[None, :], again)
  return pool[jnp.take_along_axis(order, pos, axis=1)]


class CRD(Term):
  name = "crd"
  source = "Tian et al., ICLR 2020; RepDistiller crd/criterion.py, crd/memory.py"
  defaults = {"weight": 0.8, "feat_dim": 128, "nce_k": 16384, "temperature": 0.07,
              "momentum": 0.5}
  per_run = ("weight", "temperature")
  ranges = {"temperature": "> 0", "momentum": "[0, 1)", "feat_dim": ">= 1", "nce_k": ">= 1"}

  def check(self, cfg, teachers, student, epochs):
    for key in ("feat_dim", "nce_k"):
      if int(cfg[key]) != cfg[key] or cfg[key] < 1:
        raise TermError(f"loss.crd.{key}={cfg[key]!r} must be a positive integer")
    if not 0.0 <= cfg.momentum < 1.0:
      raise TermError(f"loss.crd.momentum={cfg.momentum} must be in [0, 1)")

  def needs(self, cfg):
    return Needs(embedding=True)

  def init(self, cfg, key, student, teachers, info=None):
    n, k = int(info.num_windows) if info else 0, int(cfg.nce_k)
    if n < 1:
      raise TermError("loss.crd needs the number of windows of the dataset for its memory banks "
                      "(jkd.distill.Info.num_windows)")
    if info.train_windows and k > info.train_windows:
      raise TermError(f"loss.crd.nce_k={k} exceeds the {info.train_windows} training windows of "
                      "the smallest fold; lower loss.crd.nce_k")
    dim = int(cfg.feat_dim)
    embed = heads.Embed(dim)
    params, stats = {}, {}
    for i, t in enumerate(teachers):
      ks = jax.random.split(jax.random.fold_in(key, i), 4)
      params[str(i)] = {
          "embed_s": embed.init(ks[0], jnp.zeros(student.embedding.shape, jnp.float32))["params"],
          "embed_t": embed.init(ks[1], jnp.zeros(t.embedding.shape, jnp.float32))["params"]}
      stats[str(i)] = {"memory_s": crd_memory_init(ks[2], n, dim),
                       "memory_t": crd_memory_init(ks[3], n, dim),
                       "z_s": jnp.float32(-1.0), "z_t": jnp.float32(-1.0)}
    return {"params": params, "batch_stats": stats}

  def loss(self, cfg, hp, batch):
    if any(v is None for v in (batch.index, batch.key, batch.pool, batch.pool_count,
                               batch.all_labels)):
      raise TermError("loss.crd needs the batch's dataset indices, a step key, the run's training "
                      "indices and every window's label (context index, key, pool, pool_count, "
                      "all_labels, as jkd.engine.train.Step gives)")
    idx = batch.index
    neg = negatives(batch.key, batch.all_labels[idx], batch.pool, batch.pool_count,
                    batch.all_labels, int(cfg.nce_k))
    contrast = jnp.concatenate([idx[:, None], neg], axis=1)          # (B, K+1), positive first
    n_data = batch.pool_count.astype(jnp.float32)
    embed = heads.Embed(int(cfg.feat_dim))
    t_ = hp["temperature"]
    total, stats = jnp.float32(0.0), {}
    for i, t in enumerate(batch.teachers):
      p, s = batch.params[str(i)], batch.batch_stats[str(i)]
      e_s = embed.apply({"params": p["embed_s"]}, batch.student.embedding)
      e_t = embed.apply({"params": p["embed_t"]}, t.embedding)
      out_s = crd_scores(s["memory_t"], contrast, e_s, temperature=t_)
      out_t = crd_scores(s["memory_s"], contrast, e_t, temperature=t_)
      z_s = jnp.where(s["z_s"] < 0, crd_estimate_z(out_s, num_data=n_data), s["z_s"])
      z_t = jnp.where(s["z_t"] < 0, crd_estimate_z(out_t, num_data=n_data), s["z_t"])
      value = (crd_nce_loss(out_s / z_s, num_data=n_data)
               + crd_nce_loss(out_t / z_t, num_data=n_data))
      stats[str(i)] = {
          "memory_s": crd_memory_update(s["memory_s"], idx, e_s, cfg.momentum),
          "memory_t": crd_memory_update(s["memory_t"], idx, e_t, cfg.momentum),
          "z_s": jax.lax.stop_gradient(z_s), "z_t": jax.lax.stop_gradient(z_t)}
      total = total + batch.teacher_weights[i] * value
    return total, stats


  def example(self):
    return Example(config={"nce_k": 5, "feat_dim": 4})


TERM = CRD()
