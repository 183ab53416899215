"""A model's classifier head applied to its last stage map, from the model's variables.

SimKD, SRRL and CA-MKD reuse a (frozen) teacher's classifier on student features. In their authors'
CIFAR zoos the reused map is `feat[-2]`, the last map as the pooling reads it (post-ReLU), and the
classifier is pooling + the final Linear: CA-MKD (Rorozhl/CA-MKD `models/wrn.py`) moves its WRN's
`f3` after the final `bn1`-ReLU and reuses `distill_seq()[-1]` = avgpool → fc; SimKD
(DefangChen/SimKD `models/resnet.py`) uses ResNet-style WRNs whose `f3` is post-ReLU and reuses
`fc`. jkd's models return their stage maps at other points:

    wrn{d}_{k}          the last stage map is taken BEFORE the final `batch_norm` and activation:
                        the map the pooling reads is act(batch_norm(map)) (eval mode)
    resnet18/34,        the last stage output is already post-activation: the pooling reads it
    resnext1d           as it is (dropout, if any, is off at inference)

and every one ends in global average pooling and the Linear `fc`. `Head.features` gives the map the
pooling reads, `Head.logits` the classifier on such a map, `Head.variables` the head's part of a
model's variables (what a term copies into its state).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jkd.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Head:
  norm: str | None          # the BatchNorm applied to the last map before the activation (WRN)
  activation: str | None    # ... and the activation after it
  fc: str = "fc"

  def variables(self, variables: dict) -> dict:
    """`{'params', 'batch_stats'}` of the head alone, from a model's full variables."""
    names = [n for n in (self.norm, self.fc) if n is not None]
    stats = variables.get("batch_stats", {})
    return {"params": {n: variables["params"][n] for n in names},
            "batch_stats": {n: stats[n] for n in names if n in stats}}

  def features(self, head: dict, x: Array) -> Array:
    """The last stage map `x` as the model's pooling reads it (eval mode)."""
    if self.norm is None:
      return x
    bn = {"params": head["params"][self.norm], "batch_stats": head["batch_stats"][self.norm]}
    return layers.activation(self.activation)(layers.BatchNorm().apply(bn, x, train=False))

  def logits(self, head: dict, f: Array) -> Array:
    """The classifier on a map `f` as the pooling reads it: `fc(global_avg_pool(f))`."""
    fc = head["params"][self.fc]
    return layers.Linear(fc["kernel"].shape[-1]).apply({"params": fc}, layers.global_avg_pool(f))

  def __call__(self, head: dict, x: Array) -> Array:
    """The head on a last stage map: what the model's logits are from that map."""
    return self.logits(head, self.features(head, x))


def of(model: Any) -> Head:
  """The head of a model section (`name`, `kwargs`: e.g. a teacher's `teachers.<t>.model`)."""
  if model is None:
    raise ValueError("a classifier head needs the model's section (teachers.<name>.model)")
  name = model["name"]
  kwargs = model.get("kwargs", None) or {}
  kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
  if name.startswith("wrn"):
    return Head("batch_norm", kwargs.get("activation", "relu"))
  if name.startswith("resnet") or name == "resnext1d":
    return Head(None, None)
  raise ValueError(f"no classifier head known for model {name!r}")
