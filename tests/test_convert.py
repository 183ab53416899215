"""jkd.convert: PyTorch `.pth.tar` files read without torch, mapped onto jkd's WRN, checked.

The fixtures were written by `tests/fixtures/make_torch_fixtures.py` with torch: each `.npz` holds
the input and torch's eval-mode logits and stage features for the `.pth.tar` next to it.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from jkd import convert
from jkd.convert import CheckpointError
from jkd.models import create

FIXTURES = Path(__file__).parent / "fixtures"
# name -> (model, depth, widen, ndim, in_channels, num_classes), as make_torch_fixtures.py built it
WRNS = {
    "wrn16_1_1d": ("wrn16_1", 16, 1, 1, 5, 4),  # lab dict + optimizer, float16 storages
    "wrn10_2_1d": ("wrn10_2", 10, 2, 1, 3, 5),  # bare `module.` state_dict of strided views
    "wrn10_1_2d": ("wrn10_1", 10, 1, 2, 3, 4),  # 2-D, lab dict
}


def _fixture(name: str) -> str:
  return str(FIXTURES / f"{name}.pth.tar")


def _state(name: str) -> dict[str, np.ndarray]:
  return convert.state_dict_of(convert.read_torch(_fixture(name)))


def _archive(path: Path, pickled: bytes, storages: dict[str, bytes] | None = None) -> str:
  """A hand-made torch.save-style zip (no torch needed)."""
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickled)
    z.writestr("archive/byteorder", "little")
    for key, raw in (storages or {}).items():
      z.writestr(f"archive/data/{key}", raw)
  return str(path)


def _tensor_pickle(size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> bytes:
  """Protocol-0 opcodes for `_rebuild_tensor_v2(<FloatStorage '0' of 6>, offset, size, stride)`."""
  ints = lambda t: b"(" + b"".join(b"I%d\n" % v for v in t) + b"t"
  return (b"ctorch._utils\n_rebuild_tensor_v2\n("
          b"(S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI6\ntQ"
          + b"I%d\n" % offset + ints(size) + ints(stride) + b"I00\n}tR.")


# ----------------------------------------------------------------------------- reading

def test_reads_dtypes_strided_views_and_shared_storages():
  obj = convert.read_torch(FIXTURES / "tensors.pth.tar")
  expected = np.load(FIXTURES / "tensors.npz")
  assert set(expected.files) <= set(obj)
  for key in expected.files:
    assert obj[key].dtype == expected[key].dtype, key
    np.testing.assert_array_equal(obj[key], expected[key], err_msg=key)
  np.testing.assert_array_equal(obj["transposed"], np.arange(24, dtype=np.float32).reshape(4, 6).T)
  assert obj["meta"] == {"epoch": 1, "name": "t", "nested": [1.5, (2, 3), None]}


def test_hand_made_archive_honours_offset_and_stride(tmp_path):
  raw = np.arange(6, dtype="<f4").tobytes()
  path = _archive(tmp_path / "t.pth.tar", _tensor_pickle((2, 2), (1, 3), offset=1), {"0": raw})
  np.testing.assert_array_equal(convert.read_torch(path), [[1, 4], [2, 5]])


def test_plain_python_values_survive(tmp_path):
  meta = {"s": {1, 2}, "f": frozenset({3}), "b": b"\x00ab", "e": b"", "t": (1, [2.5, None])}
  path = _archive(tmp_path / "meta.pth.tar", pickle.dumps(meta, protocol=2))
  assert convert.read_torch(path) == meta


def test_tensor_reading_past_its_storage_is_refused(tmp_path):
  raw = np.arange(6, dtype="<f4").tobytes()
  path = _archive(tmp_path / "t.pth.tar", _tensor_pickle((3, 2), (1, 3), offset=1), {"0": raw})
  with pytest.raises(CheckpointError, match="reads past its storage"):
    convert.read_torch(path)


def test_forbidden_global_is_refused_by_name_and_not_run(tmp_path):
  marker = tmp_path / "PWNED"
  pickled = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
  path = _archive(tmp_path / "evil.pth.tar", pickled)
  with pytest.raises(CheckpointError, match=r"refusing to load global 'os\.system'") as e:
    convert.read_torch(path)
  assert str(path) in str(e.value)
  assert not marker.exists()


def test_not_a_zip_is_refused(tmp_path):
  path = tmp_path / "notes.pth.tar"
  path.write_bytes(b"hello, not a checkpoint")
  with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
    convert.read_torch(path)


def test_zip_without_data_pkl_is_refused(tmp_path):
  with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
    z.writestr("readme.txt", "hi")
  with pytest.raises(CheckpointError, match="not a torch.save archive"):
    convert.read_torch(tmp_path / "x.zip")


def test_legacy_format_asks_to_resave():
  with pytest.raises(CheckpointError, match=r"legacy \(pre-1\.6\).*torch >= 1\.6"):
    convert.read_torch(FIXTURES / "legacy.pth.tar")


# ----------------------------------------------------------------------------- WRN conversion

@pytest.mark.parametrize("name", sorted(WRNS))
def test_converted_wrn_reproduces_torch_logits_and_features(name):
  model_name, _, _, ndim, _, num_classes = WRNS[name]
  variables = convert.load_torch_wrn(_fixture(name), ndim=ndim)
  ref = np.load(FIXTURES / f"{name}.npz")
  model = create(model_name, num_classes=num_classes, ndim=ndim)
  logits, features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, ref["x"])
  np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=1e-4)
  assert len(features) == 4   # three stage maps and the pooled embedding
  for i, f in enumerate(features[:3]):
    np.testing.assert_allclose(f, ref[f"feat{i + 1}"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(WRNS))
def test_infers_architecture_and_maps_every_tensor(name):
  model_name, depth, widen, ndim, in_channels, num_classes = WRNS[name]
  variables, info = convert.load_torch_wrn(_fixture(name), return_info=True)
  assert (info.model, info.depth, info.widen_factor, info.ndim, info.in_channels,
          info.num_classes, info.source) == (model_name, depth, widen, ndim, in_channels,
                                             num_classes, _fixture(name))
  sd = _state(name)
  p, s = variables["params"], variables["batch_stats"]
  to_last = lambda w: np.moveaxis(np.moveaxis(w, 0, -1), 0, -2)  # (out, in, *k) -> (*k, in, out)
  b1, b2, b3 = (f"block{i}.nblockLayer.0." for i in (1, 2, 3))
  cases = [
      (p["conv1"]["kernel"], to_last(sd["conv1.weight"])),
      (p["block2"]["layer_0"]["conv_inp"]["kernel"], to_last(sd[b2 + "conv_inp.weight"])),
      (p["block3"]["layer_0"]["batch_norm2"]["scale"], sd[b3 + "batch_norm2.weight"]),
      (s["block1"]["layer_0"]["batch_norm1"]["var"], sd[b1 + "batch_norm1.running_var"]),
      (s["batch_norm"]["mean"], sd["batch_norm.running_mean"]),
      (p["fc"]["kernel"], sd["fc.weight"].T),
      (p["fc"]["bias"], sd["fc.bias"]),
  ]
  for got, want in cases:
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))
  n_tensors = sum(1 for k in sd if not k.endswith("num_batches_tracked"))
  assert len(jax.tree.leaves(variables)) == n_tensors
  assert ("conv_inp" in p["block1"]["layer_0"]) == (widen > 1)


def test_accepts_state_dict_key_bare_dict_and_module_prefix():
  obj = convert.read_torch(_fixture("wrn16_1_1d"))
  sd = obj["model_state_dict"]
  assert set(obj) == {"model_state_dict", "optimizer_state_dict", "epoch"}
  for wrapped in ({"state_dict": sd, "epoch": 1}, sd, {f"module.{k}": v for k, v in sd.items()}):
    assert convert.state_dict_of(wrapped).keys() == sd.keys()


def test_no_state_dict_is_refused():
  with pytest.raises(CheckpointError, match="no state_dict found.*'epoch'"):
    convert.state_dict_of({"epoch": 3, "optimizer_state_dict": {}}, "ckpt.pth.tar")


def _convert_error(sd: dict, **kw) -> str:
  with pytest.raises(CheckpointError) as e:
    convert.convert_wrn(sd, source="lab.pth.tar", **kw)
  assert str(e.value).startswith("lab.pth.tar: ")
  return str(e.value)


def test_missing_key_is_named_with_its_shape():
  sd = _state("wrn16_1_1d")
  del sd["block2.nblockLayer.0.conv_inp.weight"]
  msg = _convert_error(sd)
  assert "missing key 'block2.nblockLayer.0.conv_inp.weight' (expected shape (32, 16, 1))" in msg


def test_extra_key_is_named():
  sd = _state("wrn16_1_1d")
  sd["block1.nblockLayer.0.conv3.weight"] = np.zeros((16, 16, 3), np.float32)
  msg = _convert_error(sd)
  assert "unexpected key 'block1.nblockLayer.0.conv3.weight' (shape (16, 16, 3))" in msg


def test_shape_mismatch_is_named_with_both_shapes():
  sd = _state("wrn10_1_2d")
  sd["block3.nblockLayer.0.conv2.weight"] = np.zeros((64, 64, 5, 5), np.float32)
  msg = _convert_error(sd)
  assert ("key 'block3.nblockLayer.0.conv2.weight' has shape (64, 64, 5, 5), "
          "expected (64, 64, 3, 3)") in msg
  assert "wrn10_1 (ndim 2, in_channels 3, num_classes 4)" in msg


def test_wrong_ndim_is_refused():
  with pytest.raises(CheckpointError, match=r"is 1-D \(conv1.weight has shape \(16, 5, 3\)\) but "
                                           r"ndim=2 was requested; use ndim=1"):
    convert.load_torch_wrn(_fixture("wrn16_1_1d"), ndim=2)


def test_resnet_state_dict_is_refused():
  sd = {"conv1.weight": np.zeros((64, 3, 7), np.float32), "bn1.weight": np.ones(64, np.float32),
        "layer1.0.conv1.weight": np.zeros((64, 64, 3), np.float32),
        "fc.weight": np.zeros((4, 512), np.float32)}
  msg = _convert_error(sd)
  assert "not a WRN_sp checkpoint: it has no 'block1.nblockLayer.0.conv1.weight'" in msg


# ----------------------------------------------------------------------------- CLI and orbax

def test_cli_round_trip_through_orbax(tmp_path, capsys):
  out = tmp_path / "teacher"
  assert convert.main([_fixture("wrn10_2_1d"), str(out)]) == 0
  assert "wrn10_2" in capsys.readouterr().out
  restored, info = convert.load_variables(out)
  assert (info.model, info.ndim, info.in_channels, info.num_classes) == ("wrn10_2", 1, 3, 5)
  assert info.source == os.path.abspath(_fixture("wrn10_2_1d"))
  direct = convert.load_torch_wrn(_fixture("wrn10_2_1d"))
  assert jax.tree.structure(restored) == jax.tree.structure(direct)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert [p.name for p in tmp_path.iterdir()] == ["teacher"]  # no temp dirs left behind


def test_cli_refuses_to_overwrite_unless_asked(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  assert convert.main([_fixture("wrn16_1_1d"), str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
  assert (out / "keep.txt").read_text() == "mine"
  assert convert.main([_fixture("wrn16_1_1d"), str(out), "--overwrite", "--ndim=1"]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["info.json", "variables"]
  assert convert.load_variables(out)[1].model == "wrn16_1"


def test_cli_module_exits_nonzero_with_one_line(tmp_path):
  bad = tmp_path / "bad.pth.tar"
  bad.write_bytes(b"not a zip")
  root = Path(__file__).parent.parent
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
  r = subprocess.run([sys.executable, "-m", "jkd.convert", str(bad), str(tmp_path / "o")],
                     capture_output=True, text=True, env=env, cwd=root)
  assert r.returncode == 2
  assert r.stderr.strip().count("\n") == 0
  assert r.stderr.startswith(f"jkd.convert: error: {bad}: not a PyTorch checkpoint")
  assert not (tmp_path / "o").exists()
