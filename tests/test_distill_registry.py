"""The registry of distillation terms (`jkd.distill.TERMS`): the built-ins found at import in
their config order, `register` for a user's module and what it refuses, and ONE check for every
registered term: each per-run key changes what the objective computes (its `Term.example()`
setting), so a sweep cannot lie. The docs' term module (docs/extending.md) works as written."""

import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from jkd import distill
from jkd.distill import Outputs

from distill_setup import example_config, unchanged_keys

BUILTINS = ("ce", "focal", "kd", "dkd", "dist", "sp", "at", "fitnet", "rkd", "pkt", "annealing",
            "crd", "simkd", "srrl", "camkd", "pefd", "dcd", "projector", "mtkd_rl")
STUDENT = mc.ConfigDict({"name": "wrn10_1", "ndim": 1})


@pytest.mark.parametrize("name", list(distill.TERMS))
def test_every_per_run_key_changes_the_objective(name):
  keys, same = unchanged_keys(distill.TERMS[name])
  assert f"loss.{name}.weight" in keys
  assert not same, f"sweeping {same[0]} would change nothing"


@pytest.mark.parametrize("name", ["kd", "sp"])
def test_alpha_replaces_the_teacher_weights_and_changes_the_objective(name):
  """With two teachers and loss.alpha >= 0 the teachers' weights are (1 − α, α): α is the
  per-run key, not teachers.<name>.weight."""
  keys, same = unchanged_keys(distill.TERMS[name], alpha=0.3)
  assert "loss.alpha" in keys and not [k for k in keys if k.startswith("teachers.")]
  assert not same, f"sweeping {same[0]} would change nothing"
  keys, _ = unchanged_keys(distill.TERMS["simkd"], alpha=0.3)      # ignores the teachers' weights
  assert "loss.alpha" not in keys


def test_builtins_are_discovered_in_the_config_order():
  """The order of config.json's loss section, as before discovery."""
  assert tuple(distill.TERMS)[:len(BUILTINS)] == BUILTINS
  keys = list(json.loads(distill.loss_defaults().to_json()))
  assert keys[:2] == ["terms", "alpha"] and tuple(keys[2:2 + len(BUILTINS)]) == BUILTINS


class _Named(distill.Term):
  defaults = {"weight": 1.0}

  def __init__(self, name):
    self.name = name


@pytest.mark.parametrize("term,match", [
    (_Named("kd"), "a term named 'kd' is already registered"),
    (_Named("my-term"), "is not a Python identifier"),
    (_Named("class"), "is not a Python identifier"),
    (_Named("alpha"), "is a key of the loss section"),
    (_Named, "is not a jkd.distill.Term instance"),
])
def test_register_refuses_in_one_line(term, match):
  before = dict(distill.TERMS)
  with pytest.raises(distill.TermError, match=match) as e:
    distill.register(term)
  assert "\n" not in str(e.value) and distill.TERMS == before


USER_MODULE = '''
"""A user's own term, outside jkd: the student's logits pulled toward the teachers' mean."""

import jax
import jax.numpy as jnp

from jkd import losses
from jkd.distill import Term, TermError, register


class Mine(Term):
  name = "mine_{tag}"
  defaults = {{"weight": 1.0, "scale": 2.0}}
  per_run = ("weight", "scale")
  ranges = {{"scale": "> 0"}}

  def loss(self, cfg, hp, batch):
    target = sum(w * jax.lax.stop_gradient(t.logits)
                 for w, t in zip(batch.teacher_weights, batch.teachers))
    per = jnp.mean((batch.student.logits - hp["scale"] * target) ** 2, axis=-1)
    return losses.masked_mean(per)


TERM = register(Mine())
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  """Import a module from `source` under tmp_path; its terms leave the registry afterwards."""
  before = set(distill.TERMS)
  monkeypatch.syspath_prepend(str(tmp_path))
  names = []

  def load(name, source):
    (tmp_path / f"{name}.py").write_text(source)
    names.append(name)
    return importlib.import_module(name)

  yield load
  for name in names:
    sys.modules.pop(name, None)
  for name in set(distill.TERMS) - before:
    del distill.TERMS[name]


def test_a_term_registered_from_a_users_module_is_a_term_like_any_other(user_module):
  mod = user_module("my_terms", USER_MODULE.format(tag="a"))
  term = distill.TERMS["mine_a"]
  assert term is mod.TERM and tuple(distill.TERMS)[-1] == "mine_a"
  loss = distill.loss_defaults(("ce", "mine_a"))
  assert loss.mine_a.to_dict() == {"weight": 1.0, "scale": 2.0}
  c = example_config(term)
  distill.check(c.loss, [(n, c.teachers[n].model) for n in c.distill.teachers], STUDENT, 3)
  assert {"loss.mine_a.weight", "loss.mine_a.scale", "teachers.t0.weight"} <= set(
      distill.per_run_keys(c.loss, tuple(c.distill.teachers)))
  assert distill.ranges(c.loss, ("t0", "t1"))["loss.mine_a.scale"] == "> 0"
  keys, same = unchanged_keys(term)                   # the registry test's own check
  assert "loss.mine_a.scale" in keys and not same
  with pytest.raises(distill.TermError, match="already registered"):
    user_module("my_terms_again", USER_MODULE.format(tag="a"))
  loss.mine_a.scale = 3.0                              # a user term's keys are checked too
  with pytest.raises(distill.TermError, match="'mine_a' is not in loss.terms"):
    distill.check(mc.ConfigDict({**loss.to_dict(), "terms": ("ce",)}), [("t0", STUDENT)],
                  STUDENT, 3)


def test_a_user_term_of_which_a_key_changes_nothing_is_caught(user_module):
  lazy = USER_MODULE.format(tag="lazy").replace('hp["scale"] * target', "target")
  term = user_module("lazy_terms", lazy).TERM
  keys, same = unchanged_keys(term)
  assert same == ["loss.mine_lazy.scale"]


def _doc_module() -> str:
  """The first python code block of docs/extending.md."""
  text = (Path(__file__).parent.parent / "docs" / "extending.md").read_text()
  return textwrap.dedent(re.search(r"```python\n(.*?)```", text, re.S).group(1))


def test_the_docs_term_module_works_as_written(user_module):
  source = _doc_module()
  assert "register(" in source and "from jkd.distill import" in source
  assert not re.search(r"^from jkd\.distill\.\w+ import|^import jkd\.distill\.", source, re.M)
  mod = user_module("docs_term", source)
  term = mod.TERM
  assert distill.TERMS[term.name] is term
  keys, same = unchanged_keys(term)
  assert not same, f"sweeping {same[0]} would change nothing"
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  c = example_config(term)
  student = Outputs.of(n(4, 3), (n(4, 8, 4), n(4, 4, 8), n(4, 2, 16), n(4, 16)))
  teach = [Outputs(n(4, 3), {i: n(4, 2 ** (4 - i), 6) for i in (1, 2, 3)}, n(4, 6))
           for _ in range(2)]
  value = term.loss(c.loss[term.name], {k: jnp.float32(c.loss[term.name][k])
                                        for k in term.per_run},
                    distill.Batch(student, teach, jnp.float32([0.4, 0.6]), jnp.arange(4) % 3,
                                  jnp.int32(0), 3))
  value = value[0] if isinstance(value, tuple) else value
  assert np.isfinite(float(value)) and float(value) > 0
