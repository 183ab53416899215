"""SimKD (`jkd.distill.simkd`): the projector's MSE and the prediction through the teacher's
classifier against numpy."""

import numpy as np
import pytest

from jkd import distill

from distill_setup import (FB as B, as_np, feature_world, head_features, head_logits, kd_config,
                           pool, simkd_projector)


@pytest.fixture(scope="module")
def world():
  return feature_world(("simkd",))


def test_term_matches_numpy(world):
  """Teacher 0: the student map pooled to the teacher's length, projected, vs the map the
  teacher's classifier pools."""
  w = world
  total, terms, _ = w["run"](w["term_vars"], w["pool"][:B])
  p = as_np(w["term_vars"]["params"])
  _, (f1, f2, emb) = as_np(w["student"])
  teach, tv = as_np(w["teach"]), as_np(w["tv"])
  target = head_features(tv[0], teach[0].stages[0])
  proj = simkd_projector(pool(f2, 2), p["simkd"]["projector"])
  np.testing.assert_allclose(float(terms["simkd"]), np.mean((proj - target) ** 2), rtol=1e-4)
  np.testing.assert_allclose(float(total), float(terms["simkd"]), rtol=1e-6)


def test_simkd_predict_is_the_teacher_classifier_on_the_projection(world):
  w = world
  logits = distill.make_predict(w["c"], w["info"])(w["term_vars"], *w["student"])
  p, s = as_np(w["term_vars"]["params"]["simkd"]), as_np(w["term_vars"]["batch_stats"]["simkd"])
  _, (_, f2, _) = as_np(w["student"])
  want = head_logits(as_np(w["tv"][0]), simkd_projector(pool(f2, 2), p["projector"],
                                                       s["projector"]))
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-5)
  c = kd_config(("crd", "srrl"), ("a", "b"), crd={"nce_k": 5, "feat_dim": 4})
  assert distill.make_predict(c, w["info"]) is None
