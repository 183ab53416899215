"""Shared pieces of the distillation-term tests: a KD stage's config with teachers `a` (a 1-D WRN
section, weight 1) and `b` (a 1-D ResNet section, weight 2), the per-run values of its keys, a
world of random outputs for terms on pooled embeddings, a tiny WRN-shaped teacher (stage map
taken before its head `batch_norm` → ReLU → pool → `fc`, at a quarter of the input's length,
embedding width 5), a world for the feature terms (CRD, SimKD, SRRL, CA-MKD) with teachers whose
classifiers they copy, and numpy references of those terms' parts."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np

from jkd import config as config_lib
from jkd import distill
from jkd.distill import Info, Outputs, crd
from jkd.models import layers
from jkd.distill import Context

MODELS = {"a": {"name": "wrn10_1", "ndim": 1}, "b": {"name": "resnet18", "ndim": 1}}


def kd_config(terms, teachers=("a", "b"), **sections) -> mc.ConfigDict:
  """A KD stage's config listing `terms`; `sections`: term name -> overrides of its keys."""
  loss = distill.loss_defaults(tuple(terms))
  for name, over in sections.items():
    loss[name].update(over)
  return mc.ConfigDict({
      "train": {"epochs": 3}, "distill": {"teachers": tuple(teachers)},
      "teachers": {t: {"weight": 1.0 + i, "model": MODELS[t]} for i, t in enumerate(teachers)},
      "loss": loss})


def per_run_hp(c: mc.ConfigDict, **over) -> dict:
  """The stage's per-run keys at their config values (`over`: dotted key -> another value)."""
  return {k: jnp.float32(over.get(k, config_lib.get(c, k)))
          for k in distill.per_run_keys(c.loss, tuple(c.distill.teachers))}


def embedding_world(c: mc.ConfigDict, teacher_scale: float = 1.0, batch: int = 6,
                    classes: int = 3, d_s: int = 8, d_t: tuple = (12, 5)) -> dict:
  """Random student outputs (stages (B, 8, 4), (B, 4, 8), embedding (B, d_s)), one teacher per
  width in `d_t` (logits × `teacher_scale`, embedding only), labels, the terms' parts from
  `distill.init` and `run(term_vars, hp=None)`: the jitted objective in epoch 0."""
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  student = (n(batch, classes), (n(batch, 8, 4), n(batch, 4, 8), n(batch, d_s)))
  teach = [Outputs(n(batch, classes) * teacher_scale, {}, n(batch, d)) for d in d_t]
  labels = jnp.asarray(r.integers(0, classes, batch), jnp.int32)
  term_vars = distill.init(c.loss, jax.random.PRNGKey(0), Outputs.of(*student), teach)
  obj = jax.jit(distill.make_objective(c))

  def run(term_vars, hp=None):
    ctx = Context(epoch=jnp.int32(0), teachers=teach, distill=term_vars)
    return obj(*student, labels, per_run_hp(c) if hp is None else hp, ctx)

  return dict(c=c, student=student, teach=teach, labels=labels, term_vars=term_vars, run=run)


class TinyWRN(nn.Module):
  classes: int

  @nn.compact
  def __call__(self, x, train=False):
    h = layers.Conv(5, 4, strides=4)(x)
    emb = layers.global_avg_pool(nn.relu(layers.BatchNorm(name="batch_norm")(h, train)))
    return layers.Linear(self.classes, name="fc")(emb), (h, emb)


# ----------------------------------------------------------------------------- the feature terms

FB, FK, FN = 6, 3, 30                    # batch, classes, windows of `feature_world`
FEATURE_TERMS = ("crd", "simkd", "srrl", "camkd")
BN_EPS = 1e-5


def feature_world(terms=FEATURE_TERMS):
  """Random student outputs (stages (FB, 8, 4), (FB, 4, 8), embedding (FB, 8)); teacher a: a WRN
  (head batch_norm, fc) whose last map is half the student's length; teacher b: a ResNet (fc) of
  the same length; the terms' parts from `distill.init` (with the teachers' variables) and
  `run(term_vars, index, epoch=1, hp=None, key=3)`: the jitted objective on windows `index`."""
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  c = kd_config(terms, ("a", "b"), crd={"nce_k": 5, "feat_dim": 4})
  student = (n(FB, FK), (n(FB, 8, 4), n(FB, 4, 8), n(FB, 8)))
  teach = [Outputs(n(FB, FK) * 2, {distill.LAST: n(FB, 2, 12)}, n(FB, 12)),
           Outputs(n(FB, FK) * 2, {distill.LAST: n(FB, 4, 6)}, n(FB, 6))]
  tv = [{"params": {"batch_norm": {"scale": 1 + 0.3 * n(12), "bias": 0.2 * n(12)},
                    "fc": {"kernel": n(12, FK), "bias": n(FK)}, "conv1": {"kernel": n(3, 3, 4)}},
         "batch_stats": {"batch_norm": {"mean": 0.3 * n(12), "var": 0.5 + jnp.abs(n(12))}}},
        {"params": {"fc": {"kernel": n(6, FK), "bias": n(FK)}}, "batch_stats": {}}]
  labels = jnp.asarray(r.integers(0, FK, FN), jnp.int32)
  pool = jnp.asarray(np.r_[r.permutation(FN)[:20], np.zeros(4, int)], jnp.int32)  # 20 real
  info = Info(num_windows=FN, train_windows=20, teacher_models=tuple(
      c.teachers[t].model for t in c.distill.teachers), teachers=tuple(teach), teacher_variables=tv)
  term_vars = jax.jit(lambda key, tv: distill.init(c.loss, key, Outputs.of(*student), teach,
                                             dataclasses.replace(info, teacher_variables=tv)))(
      jax.random.PRNGKey(0), tv)
  obj = jax.jit(distill.make_objective(c))

  def run(term_vars, index, epoch=1, hp=None, key=3):
    ctx = Context(epoch=jnp.int32(epoch), teachers=teach, distill=term_vars, index=index,
           key=jax.random.PRNGKey(key), pool=pool, pool_count=jnp.int32(20),
           all_labels=labels)
    return obj(*student, labels[index], per_run_hp(c) if hp is None else hp, ctx)

  return dict(c=c, student=student, teach=teach, tv=tv, labels=labels, pool=pool, info=info,
              term_vars=term_vars, run=run)


def contrast(w, index, key=3):
  neg = crd.negatives(jax.random.PRNGKey(key), w["labels"][index], w["pool"], jnp.int32(20),
                      w["labels"], 5)
  return np.concatenate([np.asarray(index)[:, None], np.asarray(neg)], 1)


# numpy references of the feature terms' parts (float64)

def as_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def bn_train(x, p):
  m, v = x.mean((0, 1)), x.var((0, 1))
  return (x - m) / np.sqrt(v + BN_EPS) * p["scale"] + p["bias"]


def bn_eval(x, p, s):
  return (x - s["mean"]) / np.sqrt(s["var"] + BN_EPS) * p["scale"] + p["bias"]


def conv(x, p, pad=0):                      # 1-D, stride 1, kernel (w, in, out)
  k = p["kernel"]
  xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  length = xp.shape[1] - k.shape[0] + 1
  y = sum(xp[:, j:j + length] @ k[j] for j in range(k.shape[0]))
  return y + p["bias"] if "bias" in p else y


def pool(x, out):                           # adaptive average pooling, out divides the length
  return x.reshape(x.shape[0], out, -1, x.shape[-1]).mean(2)


def relu(x):
  return np.maximum(x, 0.0)


def head_features(hv, f):                   # WRN: relu(batch_norm(map)); others: the map
  if "batch_norm" not in hv["params"]:
    return f
  return relu(bn_eval(f, hv["params"]["batch_norm"], hv["batch_stats"]["batch_norm"]))


def head_logits(hv, f):
  fc = hv["params"]["fc"]
  return f.mean(1) @ fc["kernel"] + fc["bias"]


def log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def simkd_projector(x, p, s=None):                # SimKD projector, train (s None) or eval mode
  bn = (lambda h, n: bn_train(h, p[n])) if s is None else (lambda h, n: bn_eval(h, p[n], s[n]))
  h = relu(bn(conv(x, p["conv1"]), "bn1"))
  h = relu(bn(conv(h, p["conv2"], 1), "bn2"))
  return relu(bn(conv(h, p["conv3"]), "bn3"))


def crd_embed(x, p):
  h = x @ p["linear"]["kernel"] + p["linear"]["bias"]
  return h / np.linalg.norm(h, axis=1, keepdims=True)


def nce(x, n):
  noise = (x.shape[1] - 1) / n
  d1 = np.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
  d0 = np.log(noise / (x[:, 1:] + noise + 1e-7))
  return -np.mean(d1 + d0.sum(1))


def crd_np(p, s, e_s_in, e_t_in, contrast, n, temp, z=None):
  """One teacher's CRD value, its Zs and its updated banks (momentum 0.5)."""
  e_s, e_t = crd_embed(e_s_in, p["embed_s"]), crd_embed(e_t_in, p["embed_t"])
  out_s = np.exp(np.einsum("bkd,bd->bk", s["memory_t"][contrast], e_s) / temp)
  out_t = np.exp(np.einsum("bkd,bd->bk", s["memory_s"][contrast], e_t) / temp)
  z_s, z_t = z if z is not None else (out_s.mean() * n, out_t.mean() * n)
  value = nce(out_s / z_s, n) + nce(out_t / z_t, n)
  idx = contrast[:, 0]
  mem = {}
  for name, e in (("memory_s", e_s), ("memory_t", e_t)):
    m = s[name].copy()
    pos = 0.5 * m[idx] + 0.5 * e
    m[idx] = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    mem[name] = m
  return value, (z_s, z_t), mem


# ----------------------------------------------------------------------------- the registry harness

def _teacher_model(i: int, rank: int) -> dict:
  """Teacher i's model section: a WRN (classifier head batch_norm, fc), or for odd i of rank 1 a
  ResNet (fc only)."""
  return {"name": "resnet18" if rank == 1 and i % 2 else "wrn10_1", "ndim": rank}


def example_config(term) -> mc.ConfigDict:
  """A KD stage listing only `term`, its section at its defaults plus `term.example().config`,
  teachers t0, t1, ... of `example().ranks` with weights 1, 2, ..."""
  ex = term.example()
  names = tuple(f"t{i}" for i in range(len(ex.ranks)))
  loss = distill.loss_defaults((term.name,))
  loss[term.name].update(dict(ex.config))
  # the objective as a sweep over the term's per-run keys builds it (unswept, a lone term's weight
  # of 1 is not multiplied: jkd.distill.make_objective)
  sweep = {"loss": {term.name: {k: (loss[term.name][k],) for k in term.per_run}}}
  return mc.ConfigDict({
      "train": {"epochs": 3}, "distill": {"teachers": names},
      "teachers": {n: {"weight": 1.0 + i, "model": _teacher_model(i, r)}
                   for i, (n, r) in enumerate(zip(names, ex.ranks))},
      "loss": loss, "sweep": sweep})


def example_world(term, alpha: float = -1.0) -> dict:
  """`term.example()` made concrete: random student outputs (stages (B, 16, 4), (B, 8, 8),
  (B, 4, 16), embedding (B, 16)), teachers of its ranks (stage maps 1-3 with 6/12 channels, an
  embedding as wide as the last map, logits, classifier variables), the training step's context,
  the term's parts from `distill.init` after `distill.check`, and `run(hp)`: the jitted
  objective's whole output."""
  c = example_config(term)
  c.loss.alpha = alpha
  ex = term.example()
  names = tuple(c.distill.teachers)
  b, k, n_windows = 6, 3, 30
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  student = (n(b, k), (n(b, 16, 4), n(b, 8, 8), n(b, 4, 16), n(b, 16)))
  teach, tv = [], []
  for name, rank in zip(names, ex.ranks):
    wrn = c.teachers[name].model.name == "wrn10_1"
    ch = 12 if wrn else 6
    sizes = [(16,), (8,), (4,)] if rank == 1 else [(4, 4), (2, 2), (2, 2)]
    stages = {j + 1: n(b, *size, ch // 2 if j == 0 else ch) for j, size in enumerate(sizes)}
    teach.append(Outputs(n(b, k) * 2, stages, n(b, ch)))
    head = {"params": {"fc": {"kernel": n(ch, k), "bias": n(k)}}, "batch_stats": {}}
    if wrn:
      head["params"]["batch_norm"] = {"scale": 1 + 0.3 * n(ch), "bias": 0.2 * n(ch)}
      head["batch_stats"]["batch_norm"] = {"mean": 0.3 * n(ch), "var": 0.5 + jnp.abs(n(ch))}
    tv.append(head)
  labels = jnp.asarray(r.integers(0, k, n_windows), jnp.int32)
  pool = jnp.asarray(np.r_[r.permutation(n_windows)[:20], np.zeros(4, int)], jnp.int32)
  index = pool[:b]
  models = tuple(c.teachers[t].model for t in names)
  info = Info(num_windows=n_windows, train_windows=20, teacher_models=models, teachers=tuple(teach),
              teacher_variables=tv, batch_size=b, batches_per_epoch=5)
  distill.check(c.loss, list(zip(names, models)), mc.ConfigDict({"name": "wrn10_1", "ndim": 1}),
                int(c.train.epochs))
  term_vars = distill.init(c.loss, jax.random.PRNGKey(0), Outputs.of(*student), teach, info)
  obj = jax.jit(distill.make_objective(c))
  ctx = Context(epoch=jnp.int32(ex.epoch), teachers=teach, distill=term_vars, index=index,
         key=jax.random.PRNGKey(3), pool=pool, pool_count=jnp.int32(20),
         all_labels=labels, step=jnp.int32(ex.step))
  return dict(c=c, example=ex, names=names, run=lambda hp: obj(*student, labels[index], hp, ctx))


def other_value(value: float) -> float:
  """Where a per-run key is moved to: no default is a fixed point of v / 2 + 0.37 (0.74 is)."""
  return value * 0.5 + 0.37 if value else 0.3


def unchanged_keys(term, alpha: float = -1.0) -> tuple[list[str], list[str]]:
  """(the stage's per-run keys with only `term` listed, those of them whose move away from its
  value leaves the objective's output (value, terms, new batch_stats) bit for bit the same)."""
  w = example_world(term, alpha)
  c, ex = w["c"], w["example"]
  keys = distill.per_run_keys(c.loss, w["names"])
  base = per_run_hp(c)
  ref = jax.tree.leaves(w["run"](base))
  same = []
  for key in keys:
    moved = dict(base, **{key: jnp.float32(ex.others.get(key, other_value(float(base[key]))))})
    if all(np.array_equal(a, b) for a, b in zip(ref, jax.tree.leaves(w["run"](moved)))):
      same.append(key)
  return keys, same
