"""MTKD-RL, multi-teacher KD weighted per sample by a reinforcement-learned agent (Yang et al.,
AAAI 2025).

Source: kaiYinTAMU/MTKD-RL `models/policy.py` (`PolicyTrans`), `train_loops.py` (`train`,
`get_agent_state`, `train_agent`), `train_student_rl.py` (defaults, the two optimisers),
`models/util.py` (`TransFeat`, `Embed`), `distiller_zoo/feature_mse_mtkd_rl.py`
(`FeatureMSELoss`), `utils.py` (`DistillKL`).

Per teacher k: the student's last stage map goes through an embed E_k (Conv1×1 with bias – BN –
ReLU, trained with the student; aligned to the teacher's map size first, as CA-MKD's) to give
F_k. The agent's state for teacher k is [cos(pool F_k, e_k), KL_kb, CE(z_k, y)_b, e_k, z_k]
(e_k: the teacher's pooled embedding, z_k its logits, KL_kb = T²·KL(p_k^T ‖ p_s^T) per sample),
all constants. The agent (`PolicyTrans`: Linear(ΣD → hidden, no bias) – ReLU, two heads
Linear(hidden → K) + softmax) gives per-sample logit weights a and feature weights v, each the
mean of its head, the confidence weights (1 − softmax_k CE)/(K − 1), and softmax_k of KL (for a)
or of the cosine (for v); `dynamic` mixes the three by learnable softmax factors instead. In the
first epoch a = v = 1. The term is

    Σ_k mean_b(a_kb · KL_kb) + feat_weight · Σ_k mean_b(v_kb · mean(F_k − f_k)²)

(f_k: teacher k's last map as its pooling reads it, `jkd.models.head`). The per-sample reward
−(CE + Σ_k a·KL + feat_weight · Σ_k v·MSE), z-scored over the batch (unbiased std) and clamped
to [0, 1], is stored with the state. After the step with index `agent_step` (and every
`agent_step` steps after it) within an epoch, and at the next epoch's first step for what is
left, the agent takes one plain SGD step (`agent_lr`) per stored batch, in order, on the
reward-weighted binary cross-entropy of a and v toward 1 — the authors' `train_agent` (with their
default `agent_step` 1000, longer than an epoch, that is once per epoch).

State: the agent, the stored batches (at most min(agent_step + 1, steps per epoch) of them:
batch × ΣD floats each) and their count live per run in `batch_stats` (not trained by the
student's optimiser); the embeds are trained with the student. All are dropped at inference.
Teachers whose maps have another rank than the student's (image teachers of a 1-D student) have
no map to match: their feature term is left out; their state, cosine (on E_k of the student's own
map) and logit weights are kept. The authors' `TransFeat` re-pools an already pooled map for a
later teacher; here each teacher's alignment starts from the student's map.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import heads
from jkd.distill.term import (LAST, Example, Needs, Term, TermError, last_map,
                              require_teacher_variables)
from jkd.models import head as head_lib


# ----------------------------------------------------------------------------- the agent

def agent_init(key, state_sizes: tuple[int, ...], hidden: int = 128, dynamic: bool = False
               ) -> dict:
  """PolicyTrans's parameters with PyTorch's default Linear init (U(±1/sqrt(fan_in)))."""
  k = len(state_sizes)
  total = int(sum(state_sizes))
  ks = jax.random.split(key, 5)
  u = lambda key, shape, fan: jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) / math.sqrt(fan)
  agent = {"stem": u(ks[0], (total, hidden), total),
           "logit_kernel": u(ks[1], (hidden, k), hidden), "logit_bias": u(ks[2], (k,), hidden),
           "feature_kernel": u(ks[3], (hidden, k), hidden), "feature_bias": u(ks[4], (k,), hidden)}
  if dynamic:
    agent |= {"logit_factor": jnp.ones(3, jnp.float32), "feature_factor": jnp.ones(3, jnp.float32)}
  return agent


def state_columns(state_sizes: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
  """Column indices of each teacher's cosine, KL and CE in the concatenated state."""
  offsets = [int(sum(state_sizes[:k])) for k in range(len(state_sizes))]
  return offsets, [o + 1 for o in offsets], [o + 2 for o in offsets]


def agent_weights(agent: dict, states: jax.Array, state_sizes: tuple[int, ...]
                  ) -> tuple[jax.Array, jax.Array]:
  """PolicyTrans.forward: (logit weights, feature weights), each (B, K), of states (B, ΣD)."""
  cos_c, kl_c, ce_c = state_columns(state_sizes)
  k = len(state_sizes)
  dot = lambda a, b: jnp.matmul(a, b, precision=heads.HIGHEST)      # float32, not TF32
  h = jax.nn.relu(dot(states, agent["stem"]))
  head_l = jax.nn.softmax(dot(h, agent["logit_kernel"]) + agent["logit_bias"], axis=-1)
  head_f = jax.nn.softmax(dot(h, agent["feature_kernel"]) + agent["feature_bias"], axis=-1)
  conf = (1.0 - jax.nn.softmax(states[:, ce_c], axis=-1)) / (k - 1)
  by_kl = jax.nn.softmax(states[:, kl_c], axis=-1)
  by_cos = jax.nn.softmax(states[:, cos_c], axis=-1)
  if "logit_factor" in agent:
    lf, ff = jax.nn.softmax(agent["logit_factor"]), jax.nn.softmax(agent["feature_factor"])
    return (lf[0] * head_l + lf[1] * conf + lf[2] * by_kl,
            ff[0] * head_f + ff[1] * conf + ff[2] * by_cos)
  return (head_l + conf + by_kl) / 3.0, (head_f + conf + by_cos) / 3.0


def agent_loss(agent: dict, states: jax.Array, rewards: jax.Array,
               state_sizes: tuple[int, ...]) -> jax.Array:
  """`train_agent`'s loss: BCE(a, 1, weight=r) + BCE(v, 1, weight=r), each a mean over (B, K)
  of −r_b · max(log w, −100) (PyTorch's clamp)."""
  a, v = agent_weights(agent, states, state_sizes)
  bce = lambda w: jnp.mean(-rewards[:, None] * jnp.maximum(jnp.log(w), -100.0))
  return bce(a) + bce(v)


def agent_train(agent: dict, states: jax.Array, rewards: jax.Array, count: jax.Array,
                lr: jax.Array, state_sizes: tuple[int, ...]) -> dict:
  """One SGD step per stored batch, in order: the first `count` of `states` (L, B, ΣD) with
  their `rewards` (L, B)."""
  grad = jax.grad(agent_loss)

  def body(agent, i):
    g = grad(agent, states[i], rewards[i], state_sizes)
    new = jax.tree.map(lambda p, d: p - lr * d, agent, g)
    return jax.tree.map(lambda n, p: jnp.where(i < count, n, p), new, agent), None

  return jax.lax.scan(body, agent, jnp.arange(states.shape[0]))[0]


def normalized_reward(reward: jax.Array) -> jax.Array:
  """(r − mean r) / std r (unbiased, as torch's `std`), clamped to [0, 1].

  Guard: when every reward of the batch is equal (std 0; or a batch of one, whose unbiased std
  is undefined) the authors' code divides 0 by 0 (or by float rounding noise) and trains the
  agent on NaN (or arbitrary) rewards; here those rewards are 0 (no agent update from that
  batch). A batch whose rewards are not all equal is unchanged."""
  std = jnp.std(reward, ddof=1)
  # equal rewards: their float32 std is rounding noise (or 0), not a spread to normalise by
  ok = (jnp.max(reward) > jnp.min(reward)) & (std > 0)
  z = jnp.where(ok, (reward - jnp.mean(reward)) / jnp.where(ok, std, 1.0), 0.0)
  return jnp.clip(z, 0.0, 1.0)


def cosine(x: jax.Array, y: jax.Array, eps: float = 1e-8) -> jax.Array:
  """`F.cosine_similarity(x, y, dim=1)` per row."""
  return jnp.sum(x * y, -1) / jnp.maximum(jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1),
                                          eps)


def per_sample_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], -1)[:, 0]


# ----------------------------------------------------------------------------- the term

class MTKDRL(Term):
  name = "mtkd_rl"
  source = ("Yang et al., AAAI 2025; kaiYinTAMU/MTKD-RL models/policy.py, train_loops.py, "
            "train_student_rl.py")
  defaults = {"weight": 1.0, "feat_weight": 5.0, "temperature": 4.0, "agent_lr": 0.1,
              "agent_step": 1000, "hidden": 128, "dynamic": False}
  per_run = ("weight", "feat_weight", "temperature", "agent_lr")
  ranges = {"feat_weight": ">= 0", "temperature": "> 0", "agent_lr": ">= 0",
            "agent_step": ">= 1", "hidden": ">= 1"}

  def check(self, cfg, teachers, student, epochs):
    for key in ("agent_step", "hidden"):
      if int(cfg[key]) != cfg[key] or cfg[key] < 1:
        raise TermError(f"loss.mtkd_rl.{key}={cfg[key]!r} must be a positive integer")
    if not isinstance(cfg.dynamic, bool):
      raise TermError(f"loss.mtkd_rl.dynamic={cfg.dynamic!r} must be True or False")
    if len(teachers) < 2:
      raise TermError(f"loss.mtkd_rl weighs teachers by (1 − softmax CE)/(K − 1) and needs at "
                      f"least two; the stage has {len(teachers)}; add a teacher or drop 'mtkd_rl'")

  def uses_teacher_weights(self, cfg):
    return False

  def needs(self, cfg):
    return Needs(stages=frozenset({LAST}), embedding=True)

  @staticmethod
  def _matched(student, t) -> bool:
    """Whether teacher outputs `t` have maps of the student's rank (a feature term)."""
    return last_map(t).ndim == last_map(student).ndim

  def _sizes(self, teachers) -> tuple[int, ...]:
    return tuple(int(t.embedding.shape[-1] + t.logits.shape[-1] + 3) for t in teachers)

  def init(self, cfg, key, student, teachers, info=None):
    s = jnp.zeros(last_map(student).shape, jnp.float32)
    params, embed_stats, head_stats = {}, {}, {}
    for k, t in enumerate(teachers):
      dim = int(t.embedding.shape[-1])
      if self._matched(student, t):
        require_teacher_variables(self.name, info, len(teachers))
        f_t = last_map(t)
        if f_t.shape[-1] != dim:
          raise TermError(f"loss.mtkd_rl: teacher {k}'s last map has {f_t.shape[-1]} channels but "
                          f"its embedding {dim}; the agent compares them; drop 'mtkd_rl'")
        x = heads.camkd_align(s, f_t.shape[1:-1])
        head_stats[str(k)] = head_lib.of(info.teacher_models[k]).variables(
            info.teacher_variables[k])
      else:
        x = s
      v = heads.CAMKDEmbed(dim).init(jax.random.fold_in(key, k), x, train=False)
      params[str(k)], embed_stats[str(k)] = v["params"], v["batch_stats"]
    sizes = self._sizes(teachers)
    step = int(cfg.agent_step)
    per_epoch = int(info.batches_per_epoch) if info is not None else 0
    length = min(step + 1, per_epoch) if per_epoch else step + 1
    batch = int(info.batch_size) if info is not None and info.batch_size else s.shape[0]
    stats = {"embed": embed_stats, "head": head_stats,
             "agent": agent_init(jax.random.fold_in(key, len(teachers)), sizes, int(cfg.hidden),
                                 bool(cfg.dynamic)),
             "states": jnp.zeros((length, batch, sum(sizes)), jnp.float32),
             "rewards": jnp.zeros((length, batch), jnp.float32),
             "count": jnp.int32(0)}
    return {"params": params, "batch_stats": stats}

  def loss(self, cfg, hp, batch):
    if batch.step is None:
      raise TermError("loss.mtkd_rl needs the step's index within its epoch (context step, as "
                      "jkd.engine.train.Step gives)")
    st = batch.batch_stats
    sizes = self._sizes(batch.teachers)
    lr, temp, fw = hp["agent_lr"], hp["temperature"], hp["feat_weight"]

    def train_if(due, agent, states, rewards, count):
      """The agent after its SGD steps on the stored batches when `due` (the same in every
      run, so a real branch under vmap), else as it is; and the count of batches left."""
      agent = jax.lax.cond(due, lambda a: agent_train(a, states, rewards, count, lr, sizes),
                           lambda a: a, agent)
      return agent, jnp.where(due, 0, count)

    # What is left of the previous epoch trains the agent before this epoch's first batch.
    agent, count = train_if(batch.step == 0, st["agent"], st["states"], st["rewards"],
                            st["count"])

    s_map, labels = last_map(batch.student), batch.hard_labels()
    z_s = batch.student.logits
    kls, mses, state, embed_stats = [], [], [], {}
    for k, t in enumerate(batch.teachers):
      matched = self._matched(batch.student, t)
      x = heads.camkd_align(s_map, last_map(t).shape[1:-1]) if matched else s_map
      f, new = heads.CAMKDEmbed(int(t.embedding.shape[-1])).apply(
          {"params": batch.params[str(k)], "batch_stats": st["embed"][str(k)]}, x, train=True,
          mutable=["batch_stats"])
      embed_stats[str(k)] = new["batch_stats"]
      e_t, z_t = jax.lax.stop_gradient(t.embedding), jax.lax.stop_gradient(t.logits)
      kl = losses.kl_per_example(z_s, z_t, temperature=temp)
      if matched:
        hv = st["head"][str(k)]
        f_t = jax.lax.stop_gradient(head_lib.of(batch.teacher_models[k]).features(hv, last_map(t)))
        mses.append(jnp.mean((f - f_t).reshape(f.shape[0], -1) ** 2, axis=-1))
      else:
        mses.append(jnp.zeros(f.shape[0], jnp.float32))
      pooled = jnp.mean(f.reshape(f.shape[0], -1, f.shape[-1]), axis=1)
      state.append(jax.lax.stop_gradient(jnp.concatenate(
          [cosine(pooled, e_t)[:, None], kl[:, None], per_sample_ce(z_t, labels)[:, None], e_t,
           z_t], axis=1)))
      kls.append(kl)
    state = jnp.concatenate(state, axis=1)
    kl, mse = jnp.stack(kls, 1), jnp.stack(mses, 1)                       # (B, K)
    a, v = agent_weights(agent, state, sizes)
    first = batch.epoch == 0
    a = jax.lax.stop_gradient(jnp.where(first, 1.0, a))
    v = jax.lax.stop_gradient(jnp.where(first, 1.0, v))
    value = jnp.sum(jnp.mean(a * kl, 0)) + fw * jnp.sum(jnp.mean(v * mse, 0))

    reward = -(per_sample_ce(z_s, labels) + jnp.sum(a * kl, 1) + fw * jnp.sum(v * mse, 1))
    reward = jax.lax.stop_gradient(normalized_reward(reward))
    states = jax.lax.dynamic_update_index_in_dim(st["states"], state, count, 0)
    rewards = jax.lax.dynamic_update_index_in_dim(st["rewards"], reward, count, 0)
    # The authors train the agent after the batch with index agent_step, 2·agent_step, ...
    every = int(cfg.agent_step)
    agent, count = train_if((batch.step % every == 0) & (batch.step != 0), agent, states,
                            rewards, count + 1)
    return value, {"embed": embed_stats, "head": st["head"], "agent": agent, "states": states,
                   "rewards": rewards, "count": count.astype(jnp.int32)}


  def example(self):
    # the agent trains after this step (agent_step 1): agent_lr changes the new agent
    return Example(config={"hidden": 4, "agent_step": 1})


TERM = MTKDRL()
