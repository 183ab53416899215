"""Import the lab's PyTorch WRN_sp checkpoints (`.pth.tar`) as jkd variables, without PyTorch.

    python -m jkd.convert IN.pth.tar OUT_DIR [--ndim=1|2] [--overwrite]

writes `OUT_DIR/variables` (an orbax checkpoint of `{'params', 'batch_stats'}`) and
`OUT_DIR/info.json` (model name, ndim, in_channels, num_classes, source); `load_variables(OUT_DIR)`
reads them back for `jkd.models.create(info.model, ...).apply`.

Reading is `jkd.convert.torch_pickle.read_torch` (restricted unpickler; nothing in the file is executed).

Mapping (docs/protocol.md §2 keys -> `jkd.models.wrn` tree; a `module.` prefix is dropped):

    conv1.weight (out, in, *k)                 params/conv1/kernel (*k, in, out)
    block{s}.nblockLayer.{i}.{conv1,conv2,conv_inp}.weight
                                               params/block{s}/layer_{i}/<conv>/kernel
    <bn>.weight, <bn>.bias                     params/<bn>/scale, params/<bn>/bias
    <bn>.running_mean, <bn>.running_var        batch_stats/<bn>/mean, batch_stats/<bn>/var
    <bn>.num_batches_tracked                   dropped
    fc.weight (out, in), fc.bias               params/fc/kernel (in, out), params/fc/bias

Depth (6N + 4, N = layers in block1), widen factor (block1 width / 16), in_channels (conv1),
num_classes (fc) and ndim (conv1 rank - 2) come from the file; the converted tree is then checked
key by key and shape by shape against `jkd.models.create(...).init`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jkd.convert.torch_pickle import CheckpointError, read_torch


@dataclasses.dataclass(frozen=True)
class WrnInfo:
  """The architecture a checkpoint holds, as `jkd.models.create(model, num_classes=, ndim=)`."""
  model: str
  depth: int
  widen_factor: int
  ndim: int
  in_channels: int
  num_classes: int
  source: str


# ----------------------------------------------------------------------------- WRN mapping

_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_LAYER = re.compile(r"(block\d+)\.nblockLayer\.(\d+)\.(.+)")


def _to_jkd(key: str) -> tuple[str, ...] | None:
  """Torch key -> (collection, *path) in the jkd tree, or None for a key WRN_sp does not have."""
  module, _, leaf = key.rpartition(".")
  path: tuple[str, ...]
  if (m := _LAYER.fullmatch(module)):
    path = (m.group(1), f"layer_{int(m.group(2))}", m.group(3))
  else:
    path = (module,)
  if path[-1].startswith("batch_norm") and leaf in _BN_LEAVES:
    collection, name = _BN_LEAVES[leaf]
    return (collection, *path, name)
  if path[-1] in ("conv1", "conv2", "conv_inp") and leaf == "weight":
    return ("params", *path, "kernel")
  if path == ("fc",) and leaf in ("weight", "bias"):
    return ("params", "fc", "kernel" if leaf == "weight" else "bias")
  return None


def _to_torch(jkd_key: tuple[str, ...]) -> str:
  """Inverse of `_to_jkd` (for messages)."""
  collection, *path, leaf = jkd_key
  if len(path) == 3:
    path = [path[0], "nblockLayer", path[1].removeprefix("layer_"), path[2]]
  names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
  return ".".join([*path, names[leaf]])


def _torch_layout(jkd_key: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """A jkd shape in torch's layout: kernel (*k, in, out) -> (out, in, *k)."""
  if jkd_key[-1] != "kernel":
    return tuple(shape)
  return (shape[-1], shape[-2], *shape[:-2])


def _from_torch_layout(jkd_key: tuple[str, ...], a: np.ndarray) -> np.ndarray:
  if jkd_key[-1] != "kernel":
    return a
  return np.transpose(a, (*range(2, a.ndim), 1, 0))


def state_dict_of(obj: Any, source: str = "<checkpoint>") -> dict[str, np.ndarray]:
  """The model state_dict in what `read_torch` returned: `obj['model_state_dict']`,
  `obj['state_dict']` or `obj` itself; a DataParallel `module.` prefix is dropped."""
  if isinstance(obj, dict):
    for key in ("model_state_dict", "state_dict"):
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not (isinstance(obj, dict) and obj
          and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())):
    found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{source}: no state_dict found: expected a dict of tensors or a dict "
                          f"with 'model_state_dict' or 'state_dict'; found {found}")
  if all(k.startswith("module.") for k in obj):
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
  return dict(obj)


def wrn_info(state: dict[str, np.ndarray], *, ndim: int | None = None,
             source: str = "<state_dict>") -> WrnInfo:
  """The WRN architecture a state_dict holds; `ndim` (if given) must match the conv rank."""
  for key in ("conv1.weight", "block1.nblockLayer.0.conv1.weight", "fc.weight"):
    if key not in state:
      raise CheckpointError(
          f"{source}: not a WRN_sp checkpoint: it has no '{key}' (jkd imports the lab's "
          f"Wide-ResNet only; keys found: {', '.join(sorted(state)[:6])}, ...)")
  stem, fc = state["conv1.weight"], state["fc.weight"]
  rank = stem.ndim - 2
  if rank not in (1, 2) or fc.ndim != 2:
    raise CheckpointError(f"{source}: conv1.weight has shape {stem.shape} and fc.weight "
                          f"{fc.shape}; expected Conv1d/Conv2d and Linear weights")
  if ndim is not None and ndim != rank:
    raise CheckpointError(f"{source}: the checkpoint is {rank}-D (conv1.weight has shape "
                          f"{stem.shape}) but ndim={ndim} was requested; use ndim={rank}")
  blocks = 1 + max(int(m.group(2)) for k in state if (m := _LAYER.fullmatch(k.rpartition(".")[0]))
                   and m.group(1) == "block1")
  width = state["block1.nblockLayer.0.conv1.weight"].shape[0]
  if width % 16 or not width:
    raise CheckpointError(f"{source}: block1 has {width} filters, not a multiple of 16; "
                          f"not a WRN_sp checkpoint")
  depth, widen = 6 * blocks + 4, width // 16
  return WrnInfo(f"wrn{depth}_{widen}", depth, widen, rank, stem.shape[1], fc.shape[0], source)


def convert_wrn(state: dict[str, np.ndarray], *, ndim: int | None = None,
                source: str = "<state_dict>") -> tuple[dict[str, Any], WrnInfo]:
  """A WRN_sp state_dict -> (jkd variables `{'params', 'batch_stats'}` as float32 numpy, info).

  Every key and shape is checked against `jkd.models.create(info.model, ...).init`; all problems
  are reported in one CheckpointError (torch key names and torch layouts)."""
  from jkd.models import create

  info = wrn_info(state, ndim=ndim, source=source)
  model = create(info.model, num_classes=info.num_classes, ndim=info.ndim)
  x = jnp.zeros((1, *[8] * info.ndim, info.in_channels), jnp.float32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  expected = {tuple(p.key for p in path): leaf
              for path, leaf in jax.tree_util.tree_flatten_with_path(dict(abstract))[0]}

  problems, found = [], {}
  for key, value in state.items():
    if key.endswith(".num_batches_tracked"):
      continue
    target = _to_jkd(key)
    if target not in expected:
      problems.append(f"unexpected key '{key}' (shape {tuple(value.shape)})")
      continue
    want = _torch_layout(target, expected[target].shape)
    if tuple(value.shape) != want:
      problems.append(f"key '{key}' has shape {tuple(value.shape)}, expected {want}")
      continue
    found[target] = _from_torch_layout(target, value).astype(expected[target].dtype)
  for target, leaf in expected.items():
    if target not in found and _to_torch(target) not in state:
      problems.append(f"missing key '{_to_torch(target)}' (expected shape "
                      f"{_torch_layout(target, leaf.shape)})")
  if problems:
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    raise CheckpointError(f"{source}: does not match jkd's {info.model} (ndim {info.ndim}, "
                          f"in_channels {info.in_channels}, num_classes {info.num_classes}): "
                          + "; ".join(problems[:3]) + more)

  variables: dict[str, Any] = {}
  for (collection, *path), value in found.items():
    node = variables.setdefault(collection, {})
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return variables, info


def load_torch_wrn(path: str | os.PathLike, *, ndim: int | None = None,
                   return_info: bool = False) -> dict[str, Any] | tuple[dict[str, Any], WrnInfo]:
  """The jkd variables `{'params', 'batch_stats'}` of a lab WRN_sp `.pth.tar` (see module doc).

  Args:
    path: a `torch.save` file holding `{'model_state_dict': ...}`, `{'state_dict': ...}` or a
      bare state_dict.
    ndim: 1 (Conv1d) or 2 (Conv2d); checked against the file. None: taken from the file.
    return_info: also return the WrnInfo (model name, ndim, in_channels, num_classes, source).
  """
  source = os.fspath(path)
  variables, info = convert_wrn(state_dict_of(read_torch(source), source), ndim=ndim, source=source)
  return (variables, info) if return_info else variables


# ----------------------------------------------------------------------------- jkd checkpoint

def save_variables(directory: str | os.PathLike, variables: dict[str, Any], info: WrnInfo, *,
                   overwrite: bool = False) -> Path:
  """Writes `directory/variables` (orbax) and `directory/info.json` atomically (temp dir + rename).

  A non-empty `directory` is refused unless `overwrite`."""
  import orbax.checkpoint as ocp

  out = Path(directory).absolute()
  if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
    raise FileExistsError(f"{out} exists and is not empty; choose another directory or pass "
                          f"--overwrite (overwrite=True) to replace it")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    tmp.mkdir()
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / "variables", variables)
      checkpointer.wait_until_finished()
    (tmp / "info.json").write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")
    if out.is_dir() and not any(out.iterdir()):
      out.rmdir()
    if out.exists() or out.is_symlink():
      old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
      out.rename(old)
      tmp.rename(out)
      shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
      tmp.rename(out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return out


def load_variables(directory: str | os.PathLike) -> tuple[dict[str, Any], WrnInfo]:
  """Reads what `save_variables` wrote: (variables, info)."""
  import orbax.checkpoint as ocp

  root = Path(directory).absolute()
  if not (root / "info.json").is_file() or not (root / "variables").is_dir():
    raise CheckpointError(f"{root}: not a jkd.convert output (expected info.json and variables/)")
  info = WrnInfo(**json.loads((root / "info.json").read_text()))
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(root / "variables")
  return variables, info


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m jkd.convert", description="Convert a lab WRN_sp .pth.tar to jkd.")
  parser.add_argument("input", help="torch.save file (.pth.tar)")
  parser.add_argument("out_dir", help="output directory (must be empty or absent)")
  parser.add_argument("--ndim", type=int, choices=(1, 2), default=None,
                      help="1 (signals) or 2 (images); default: from the checkpoint")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
  args = parser.parse_args(argv)
  try:
    source = os.path.abspath(args.input)
    variables, info = load_torch_wrn(source, ndim=args.ndim, return_info=True)
    out = save_variables(args.out_dir, variables, info, overwrite=args.overwrite)
  except (CheckpointError, OSError) as e:
    print(f"jkd.convert: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2   # the user's input, as jkd.main and argparse report it
  print(f"jkd.convert: {info.model} ({info.ndim}-D, in_channels {info.in_channels}, "
        f"num_classes {info.num_classes}) from {info.source} -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
