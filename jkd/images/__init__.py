"""What a model consumes, from its config section: the windows, or (2-D) their images.

`model.image` picks the image of each channel for 2-D models:

* ``gaf``: Gramian Angular Fields of the normalised windows, as rank-2 factors that the first
  convolution contracts without building the images (`jkd.images.gaf.gaf_factors`);
* ``pi``: persistence images (`jkd.images.pi.persistence_image`, options in `model.pi`), as dense
  `(B, S, S, C)` images built inside the step. The lab made them from the min-max scaled windows
  before any z-scoring, so they are computed from the raw windows: a teacher trained on the lab's
  images sees the same images (docs/persistence_images.md). Factors would not help here
  (measured there): a PI is a sum of up to ceil(L / 2) - 1 rank-1 terms per channel, not 2.
"""

from __future__ import annotations

from typing import Any

import jax

from jkd.images import gaf, pi

Array = jax.Array
IMAGES = ("gaf", "pi")
PI_DEFAULTS = {"spread": 0.015, "birth_range": (-1.0, 1.0), "threshold": 0.01}


def image_input(model_cfg: Any, x: Array, raw: Array | None = None) -> Any:
  """The input of a model with config section `model_cfg` (`ndim`, `image`, `image_size`,
  `gaf_method`, `pi`) from normalised windows `x` (B, L, C) and the same windows before
  normalisation, `raw` (needed for persistence images): `x` itself (1-D), GAF factors, or
  persistence images."""
  if model_cfg.ndim != 2:
    return x
  kind = model_cfg.get("image", "gaf")
  if kind == "gaf":
    return gaf.gaf_factors(x, model_cfg.image_size, method=model_cfg.gaf_method)
  if kind != "pi":
    raise ValueError(f"model.image={kind!r} is not one of {', '.join(IMAGES)}")
  if raw is None:
    raise ValueError("image_input: persistence images are made from the raw (un-normalised) "
                     "windows; pass raw")
  given = model_cfg.get("pi", None) or {}
  opts = {**PI_DEFAULTS, **(given.to_dict() if hasattr(given, "to_dict") else dict(given))}
  return pi.persistence_image(raw, model_cfg.image_size, spread=opts["spread"],
                              birth_range=tuple(opts["birth_range"]),
                              threshold=opts["threshold"])
