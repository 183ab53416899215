"""PAMAP2 source: the fast parser, each preprocessing step, the lab's pickle, the cache, the errors.

Expected values come from a row-by-row Python reimplementation of docs/protocol.md §6.1 written here
(tokens read with Python's float), and from hand-computed values.
"""

import math
import os
import pickle
import struct
import sys

import numpy as np
import pytest

from jkd.data import pamap2, pamap2_parse
from jkd.data.base import DataError

# docs/protocol.md §6.1, copied independently of jkd/data/pamap2.py
LAB_MAX = [202.0, 35.5, 47.6314, 155.532, 157.76, 45.5484, 62.2598, 61.728, 21.8452, 13.1222,
           14.2184, 137.544, 109.181, 100.543, 38.5625, 26.386, 153.582, 37.2936, 23.9101, 61.9328,
           36.9676, 15.5171, 5.97964, 2.94183, 80.4739, 39.7391, 95.8415, 35.4375, 157.232,
           157.293, 150.99, 61.9509, 62.0461, 60.9357, 17.4204, 13.5882, 13.9617, 91.4247, 92.867,
           146.651]
LAB_MIN = [0.0, 0.0, -114.755, -104.301, -73.0384, -61.1938, -61.8086, -61.4193, -27.8044,
           -17.8495, -14.2647, -103.941, -200.043, -163.608, 0.0, -29.0888, -38.1657, -57.2366,
           -32.9627, -39.7561, -56.0108, -10.1563, -5.06858, -3.99487, -70.0627, -122.48, -66.6847,
           0.0, -155.068, -155.617, -156.179, -60.3067, -61.9064, -62.2629, -14.162, -13.0401,
           -14.0196, -172.865, -137.908, -102.232]
LAB_ORDER = [24, 1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17]
LAB_DROP = [0, 8, 9, 10, 11, 18, 19, 20]


def reference(path, drop=LAB_DROP, order=LAB_ORDER, orientation=False, fill=True, minmax=True,
              down=3):
  """docs/protocol.md §6.1 row by row."""
  rows = [[float(t) for t in line.split()] for line in open(path) if line.strip()]
  rows = [r for r in rows if int(r[1]) not in drop]
  labels = [order.index(int(r[1])) for r in rows]
  cols = [2] + [3 + 17 * i + j for i in range(3) for j in range(17 if orientation else 13)]
  lo = [LAB_MIN[0]] + sum([LAB_MIN[1 + 13 * i:14 + 13 * i] + ([-1.0] * 4 if orientation else [])
                           for i in range(3)], [])
  hi = [LAB_MAX[0]] + sum([LAB_MAX[1 + 13 * i:14 + 13 * i] + ([1.0] * 4 if orientation else [])
                           for i in range(3)], [])
  x, last = [], math.nan
  for r in rows:
    v = [r[c] for c in cols]
    if fill:
      if math.isnan(v[0]):
        v[0] = last
      else:
        last = v[0]
    v = [0.0 if math.isnan(a) else a for a in v]
    if minmax:
      v = [(a - l) / (h - l) for a, l, h in zip(v, lo, hi)]
      v = [0.99 if a > 1 else 0.0 if a < 0 else a for a in v]
    x.append(v)
  return np.array(x[::down], np.float32).reshape(-1, len(cols)), np.array(labels[::down], np.int64)


def write_dat(path, seed, rows=400, acts=(0, 1, 0, 24, 9, 5, 12, 0, 17, 18, 3), extra_lines=()):
  """A small Protocol-format file: 54 columns, NaN heart-rate runs (and a NaN start), transient
  and dropped activities, NaNs and out-of-bound values in the IMUs, mixed number formats."""
  rng = np.random.default_rng(seed)
  act = np.repeat(acts, -(-rows // len(acts)))[:rows]
  data = rng.standard_normal((rows, 54)) * rng.choice([0.001, 1.0, 30.0, 150.0], 54)
  data[rng.random((rows, 54)) < 0.01] = np.nan
  data[:, 0] = 5 + np.arange(rows) / 100
  data[:, 1] = act
  data[:, 2] = np.where(np.arange(rows) % 9 == 4, rng.integers(60, 200, rows), np.nan)
  data[:7, 2] = np.nan
  formats = ["%g", "%.6f", "%.3e", "%.10g", "%.1f"]
  lines = []
  for i, r in enumerate(data):
    toks = ["%d" % r[0] if i % 50 == 0 else "%.2f" % r[0], "%d" % r[1]]
    toks += ["NaN" if np.isnan(v) else formats[(i + j) % 5] % v for j, v in enumerate(r[2:])]
    lines.append(" ".join(toks))
  lines += list(extra_lines)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
  """A PAMAP2_Dataset/Protocol folder with all nine subjects."""
  root = tmp_path_factory.mktemp("pamap") / "PAMAP2_Dataset"
  (root / "Protocol").mkdir(parents=True)
  for i, s in enumerate(pamap2.SUBJECTS):
    write_dat(root / "Protocol" / f"subject{s}.dat", seed=i, rows=300 + 20 * i)
  return root


def cfg(path, **kw):
  c = pamap2.default_config()
  c.path, c.cache_dir = str(path), ""
  c.update(kw)
  return c


# ---- parser -----------------------------------------------------------------------------------

TRICKY = ["0", "-0", "+3", ".5", "-.5", "5.", "-0.0922174", "14.6806", "NaN", "nan", "-inf",
          "1e5", "1E5", "-6.81079e-05", "+1e+05", ".5e3", "-12345678901234.5", "123456789012345",
          "1234567890123456", "99999999999999.9", "0.000000000000001", "1.7976931348623157e308",
          "4.9e-324", "1e400", "0.1", "0.3", "2.675", "-999999.999999", "7", "-1234567.8901234"]


def _float_table(path):
  return [[float(t) for t in line.split()] for line in open(path, newline="") if line.strip()]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_parse_is_exactly_pythons_float(tmp_path, newline):
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(TRICKY, 54)) for _ in range(40)]
  lines[3] = "\t".join(lines[3].split()) + "  "  # tabs and trailing blanks
  path = tmp_path / "t.dat"
  text = newline.join(lines[:20]) + newline + newline + newline.join(lines[20:])  # a blank line
  path.write_bytes(text.encode())
  got, want = pamap2_parse.parse_dat(str(path)), np.array(_float_table(path))
  assert got.shape == (40, 54) and got.dtype == np.float64
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_parse_across_small_chunks_and_threads(tmp_path, monkeypatch):
  paths = []
  for i in range(3):
    write_dat(tmp_path / f"s{i}.dat", seed=10 + i, rows=120)
    paths.append(str(tmp_path / f"s{i}.dat"))
  monkeypatch.setattr(pamap2_parse, "CHUNK", 700)  # a few lines per chunk
  for got, p in zip(pamap2_parse.parse_many(paths, workers=2), paths):
    np.testing.assert_array_equal(got, np.array(_float_table(p)))


def test_parse_errors_name_file_and_line(tmp_path, monkeypatch):
  monkeypatch.setattr(pamap2_parse, "CHUNK", 2000)
  good = " ".join(["1.5"] * 54)
  bad_cols = tmp_path / "cols.dat"
  bad_cols.write_text("\n".join([good] * 30 + [" ".join(["1"] * 53)] + [good] * 5) + "\n")
  with pytest.raises(DataError, match=r"cols\.dat, line 31: 53 columns, expected 54"):
    pamap2_parse.parse_dat(str(bad_cols))
  no_newline = tmp_path / "last.dat"
  no_newline.write_text(good + "\n" + " ".join(["1"] * 55))
  with pytest.raises(DataError, match=r"last\.dat, line 2: 55 columns"):
    pamap2_parse.parse_dat(str(no_newline))
  for token in ["1.2.3", "1-2", "abc", "1_0", "0x10", "--1", "1e", "."]:
    path = tmp_path / "tok.dat"
    path.write_text("\n".join([good] * 40 + [good.replace("1.5", token, 1)]) + "\n")
    with pytest.raises(DataError, match=rf"tok\.dat, line 41: non-numeric token '{token}'"):
      pamap2_parse.parse_dat(str(path))


# ---- the compiled parser (jkd/data/_datparse.c, built by pip where a C compiler is) -------------

C_TOKENS = [t for t in TRICKY if "inf" not in t] + [
    "12345678901234567890", "0.12345678901234567890123", "9007199254740993", "1e-30", "-0.0",
    "2.2250738585072014e-308", "00000.5", "1.e3", "+.5", "NAN"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_c_parser_is_exactly_pythons_float(tmp_path, monkeypatch, newline):
  """Fast-path and strtod tokens, tabs, blank lines, a last line without newline, pieces of a few
  bytes (lines cut across reads, a line longer than the buffer): bit for bit Python's float."""
  mod = pamap2_parse.c_module()
  if mod is None:
    pytest.skip("the C parser was not built (no C compiler at install)")
  rng = np.random.default_rng(1)
  lines = [" ".join(rng.choice(C_TOKENS, 54)) for _ in range(60)]
  lines[5] = "\t".join(lines[5].split()) + "  "
  path = tmp_path / "c.dat"
  path.write_bytes((newline.join(lines[:30]) + newline * 3 + newline.join(lines[30:])).encode())
  want = np.array(_float_table(path))
  for piece in (1 << 20, 100):                        # 100 bytes: every line spans pieces
    monkeypatch.setattr(pamap2_parse, "C_PIECE", piece)
    got = pamap2_parse._parse_c(mod, str(path), 54)
    assert got is not None, "the C parser handed a plain file on"
    assert got.shape == (60, 54) and got.dtype == np.float64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
  empty = tmp_path / "empty.dat"
  empty.write_text("")
  assert pamap2_parse.parse_dat(str(empty), parser="c").shape == (0, 54)


@pytest.mark.parametrize("portable", [False, True])
def test_c_parser_reads_random_plain_decimals_as_pythons_float(portable):
  """Random [+-]digits[.digits] tokens of 1-16 characters (the parser's branch-free path and its
  edges: leading or trailing dot, leading zeros, 15 digits): bit for bit Python's float, both with
  the AVX-512 token reader (where the CPU has it) and with the portable one."""
  mod = pamap2_parse.c_module()
  if mod is None:
    pytest.skip("the C parser was not built (no C compiler at install)")
  if not portable and not mod.SIMD:
    pytest.skip("this CPU has no AVX-512 VBMI2: the C parser uses its portable reader only")
  rng = np.random.default_rng(2)
  tokens = []
  for _ in range(20_000):
    digits = "".join(rng.choice(list("0123456789"), rng.integers(1, 16)))
    if rng.random() < 0.7:
      q = rng.integers(0, len(digits) + 1)
      digits = digits[:q] + "." + digits[q:]
    tokens.append(rng.choice(["", "", "-", "+"]) + digits)
  tokens += ["-0.0", "+0", ".5", "5.", "-.5", "0.05", "123456789012345", "1234567.89012345"]
  cols = 8
  tokens = tokens[:len(tokens) // cols * cols]
  text = "\n".join(" ".join(tokens[i:i + cols]) for i in range(0, len(tokens), cols)) + "\n"
  out = np.empty((len(tokens) // cols, cols))
  end, used = mod.parse(text.encode(), cols, out, 0, True, portable)
  assert (end, used) == (len(tokens) // cols, len(text))
  want = np.array([float(t) for t in tokens])
  np.testing.assert_array_equal(out.ravel(), want)
  np.testing.assert_array_equal(np.signbit(out.ravel()), np.signbit(want))


def test_c_parser_hands_odd_files_to_numpy(tmp_path, monkeypatch):
  """`inf`, a signed NaN or a wrong column count: the whole file goes to the numpy parser, which
  reads the first two like np.loadtxt and names file and line of the third."""
  mod = pamap2_parse.c_module()
  if mod is None:
    pytest.skip("the C parser was not built (no C compiler at install)")
  good = " ".join(["1.5"] * 54)
  for token in ("-inf", "-nan", "Infinity"):
    path = tmp_path / "odd.dat"
    path.write_text("\n".join([good] * 3 + [good.replace("1.5", token, 1)]) + "\n")
    assert pamap2_parse._parse_c(mod, str(path), 54) is None
    got = pamap2_parse.parse_dat(str(path), parser="c")
    np.testing.assert_array_equal(got, np.array(_float_table(path)))
  for line, message in ((" ".join(["1"] * 53), r"cols\.dat, line 31: 53 columns, expected 54"),
                        (good.replace("1.5", "1.2.3", 1), r"line 31: non-numeric token '1\.2\.3'")):
    path = tmp_path / "cols.dat"
    path.write_text("\n".join([good] * 30 + [line] + [good] * 3) + "\n")
    with pytest.raises(DataError, match=message):
      pamap2_parse.parse_dat(str(path), parser="c")
  monkeypatch.setattr(pamap2_parse, "c_module", lambda: None)
  with pytest.raises(DataError, match=r"parser='c' needs jkd's compiled parser.*use parser='auto'"):
    pamap2_parse.parse_dat(str(path), parser="c")


# ---- the polars parser (the `pamap2` extra) and the fallback to numpy ----------------------------

def test_polars_equals_numpy_equals_loadtxt(tmp_path):
  pytest.importorskip("polars")
  from jkd.bench.pamap2_parse import write_synthetic
  paths = write_synthetic(str(tmp_path), files=2, rows=3000, seed=3)
  write_dat(tmp_path / "mixed.dat", seed=5, rows=300)  # %.3e, %.10g, NaN heart rate, ...
  paths.append(str(tmp_path / "mixed.dat"))
  for p in paths:
    text = open(p).read()
    assert "NaN" in text and "e-0" in text  # NaN and exponent tokens are in every file
    fast = pamap2_parse._parse_polars(pamap2_parse.polars_module(), p, 54)
    assert fast is not None, f"polars fell back on {p}"  # the fast path really ran
    want = np.loadtxt(p)
    for got in (fast, pamap2_parse.parse_dat(p, parser="numpy"),
                pamap2_parse.parse_dat(p, parser="auto")):
      assert got.dtype == np.float64 and got.shape == want.shape and got.flags.c_contiguous
      np.testing.assert_array_equal(got, want)  # NaN at the same places
      np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    assert fast.flags.writeable


def test_polars_falls_back_to_numpy(tmp_path):
  """What polars cannot read strictly goes to the numpy parser: it reads the odd layouts and
  raises the DataError with file and line for the malformed files."""
  pytest.importorskip("polars")
  good = " ".join(["1.5"] * 54)
  odd = {"tabs": "\t".join(["1.5"] * 54), "blanks": good.replace(" ", "  ", 3),
         "trailing": good + " ", "empty_line": ""}
  for name, line in odd.items():
    path = tmp_path / f"{name}.dat"
    path.write_text("\n".join([good] * 5 + [line] + [good] * 2) + "\n")
    got = pamap2_parse.parse_dat(str(path), parser="polars")
    np.testing.assert_array_equal(got, np.array(_float_table(path)))
  bad = {"fewer": (" ".join(["1"] * 53), r"fewer\.dat, line 31: 53 columns, expected 54"),
         "more": (" ".join(["1"] * 55), r"more\.dat, line 31: 55 columns, expected 54"),
         "token": (good.replace("1.5", "1.2.3", 1), r"token\.dat, line 31: non-numeric token "
                   "'1.2.3'"),
         "hex": (good.replace("1.5", "0x10", 1), r"hex\.dat, line 31: non-numeric token")}
  for name, (line, message) in bad.items():
    path = tmp_path / f"{name}.dat"
    path.write_text("\n".join([good] * 30 + [line] + [good] * 3) + "\n")
    assert pamap2_parse._parse_polars(pamap2_parse.polars_module(), str(path), 54) is None
    with pytest.raises(DataError, match=message):
      pamap2_parse.parse_dat(str(path), parser="polars")
  empty = tmp_path / "empty.dat"
  empty.write_text("")
  assert pamap2_parse.parse_dat(str(empty), parser="polars").shape == (0, 54)
  with pytest.raises(ValueError, match="choose one of auto, c, numpy, polars"):
    pamap2_parse.parse_dat(str(empty), parser="fast")


def test_without_polars(tmp_path, monkeypatch):
  """Without the `pamap2` extra, "auto" is the numpy parser and "polars" says what to install."""
  monkeypatch.setitem(sys.modules, "polars", None)  # `import polars` raises ImportError
  assert pamap2_parse.polars_module() is None
  write_dat(tmp_path / "s.dat", seed=2, rows=100)
  got = pamap2_parse.parse_dat(str(tmp_path / "s.dat"))
  np.testing.assert_array_equal(got, np.array(_float_table(tmp_path / "s.dat")))
  with pytest.raises(DataError, match=r"needs polars: pip install 'jkd\[pamap2\]'"):
    pamap2_parse.parse_dat(str(tmp_path / "s.dat"), parser="polars")
  bad = tmp_path / "bad.dat"
  bad.write_text(" ".join(["1"] * 54) + "\n" + " ".join(["1"] * 53) + "\n")
  with pytest.raises(DataError, match=r"bad\.dat, line 2: 53 columns"):
    pamap2_parse.parse_dat(str(bad))


def test_cache_key_does_not_depend_on_the_parser(protocol, tmp_path, monkeypatch):
  pytest.importorskip("polars")
  c = cfg(protocol, subjects=(102,), cache_dir=str(tmp_path / "cache"), parser="polars")
  first = pamap2.load(c)
  monkeypatch.setattr(pamap2_parse, "parse_dat", lambda *a, **k: pytest.fail("parsed again"))
  c.parser = "numpy"
  again = pamap2.load(c)  # the entry written after the polars parse
  np.testing.assert_array_equal(again.recordings[0].x, first.recordings[0].x)
  monkeypatch.undo()
  fresh = pamap2.load(cfg(protocol, subjects=(102,), parser="numpy"))  # no cache
  np.testing.assert_array_equal(fresh.recordings[0].x, first.recordings[0].x)
  np.testing.assert_array_equal(fresh.recordings[0].y, first.recordings[0].y)
  with pytest.raises(DataError, match="config.data.parser='fast': choose one of auto"):
    pamap2.load(cfg(protocol, subjects=(102,), parser="fast"))


# ---- preprocessing ----------------------------------------------------------------------------

def test_load_matches_row_by_row_reference(protocol):
  ds = pamap2.load(cfg(protocol, subjects=(101, 105)))
  assert [r.subject for r in ds.recordings] == [101, 105]
  assert len(ds.channels) == 40 and ds.channels[:3] == ["heart_rate", "hand_temperature",
                                                        "hand_acc16_x"]
  assert ds.classes[0] == "rope jumping" and ds.classes[11] == "ironing" and len(ds.classes) == 12
  for r in ds.recordings:
    x, y = reference(protocol / "Protocol" / f"subject{r.subject}.dat")
    assert r.x.dtype == np.float32 and r.y.dtype == np.int64 and r.session == 0
    np.testing.assert_array_equal(r.x, x)
    np.testing.assert_array_equal(r.y, y)


@pytest.mark.parametrize("options, ref", [
    ({"orientation": True}, {"orientation": True}),
    ({"fill_heart_rate": False}, {"fill": False}),
    ({"minmax": False}, {"minmax": False}),
    ({"downsample": 1}, {"down": 1}),
    ({"drop_activities": (0, 8, 10, 11, 18, 19, 20), "activities": LAB_ORDER + [9]},
     {"drop": [0, 8, 10, 11, 18, 19, 20], "order": LAB_ORDER + [9]}),
    ({"activities": (1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24)},
     {"order": [1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24]}),
])
def test_each_option(protocol, options, ref):
  ds = pamap2.load(cfg(protocol, subjects=(102,), **options))
  x, y = reference(protocol / "Protocol" / "subject102.dat", **ref)
  np.testing.assert_array_equal(ds.recordings[0].x, x)
  np.testing.assert_array_equal(ds.recordings[0].y, y)
  assert len(ds.channels) == x.shape[1]


def _rows_file(path, rows):
  """rows: (activity, heart rate, {channel column: value}) -> a .dat with zeros elsewhere."""
  lines = []
  for i, (act, hr, vals) in enumerate(rows):
    r = ["%.2f" % (i / 100), str(act), hr] + ["0"] * 51
    for col, v in vals.items():
      r[col] = v
    lines.append(" ".join(r))
  path.write_text("\n".join(lines) + "\n")


def test_hand_values(tmp_path):
  acts = [24, 1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17]
  rows = [(0, "150", {})]  # transient row: dropped BEFORE the heart-rate fill
  rows += [(a, "NaN", {}) for a in acts[:3]]  # leading NaN heart rate -> 0
  rows += [(acts[3], "101", {})] + [(0, "77", {})] + [(a, "NaN", {}) for a in acts[4:]]
  # hand acc16 x (column 4): bounds [-114.755, 47.6314]
  rows += [(1, "80", {4: "47.6315"}), (1, "80", {4: "-114.76"}), (1, "80", {4: "0"}),
           (1, "80", {4: "NaN"}), (1, "80", {4: "1e9"})]
  _rows_file(tmp_path / "subject101.dat", rows)
  ds = pamap2.load(cfg(tmp_path, subjects=(101,), downsample=1))
  x, y = ds.recordings[0].x, ds.recordings[0].y
  assert y.tolist() == list(range(12)) + [1] * 5  # 24->0, 1..7 unchanged, 12->8 .. 17->11
  hr = x[:, 0] * 202.0
  np.testing.assert_allclose(hr[:12], [0, 0, 0] + [101] * 9, rtol=1e-6)  # not 150, not 77
  acc = x[12:, 2]
  mid = np.float32(114.755 / (47.6314 + 114.755))
  assert acc.tolist() == [np.float32(0.99), 0.0, mid, mid, np.float32(0.99)]  # NaN -> 0 -> scaled
  ds3 = pamap2.load(cfg(tmp_path, subjects=(101,)))
  np.testing.assert_array_equal(ds3.recordings[0].x, x[::3])
  np.testing.assert_array_equal(ds3.recordings[0].y, y[::3])


# ---- the lab's pickle -------------------------------------------------------------------------

class _Python2Pickler(pickle._Pickler):
  """Writes what Python 2 + numpy wrote: str opcodes for bytes/str, numpy.core module names."""
  dispatch = pickle._Pickler.dispatch.copy()

  def save_py2_str(self, obj):
    data = obj if isinstance(obj, bytes) else obj.encode("latin1")
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
    self.memoize(obj)

  dispatch[bytes] = save_py2_str
  dispatch[str] = save_py2_str

  def save_global(self, obj, name=None):
    module = obj.__module__.replace("numpy._core", "numpy.core")
    self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
    self.memoize(obj)

  dispatch[type] = save_global


def _python2_pickle(path, pairs):
  with open(path, "wb") as f:
    _Python2Pickler(f, protocol=2).dump([(x.astype(np.float64), y) for x, y in pairs])


def test_pickle_equals_dat_path(protocol, tmp_path):
  dat = pamap2.load(cfg(protocol))
  path = tmp_path / pamap2.PICKLE_NAME
  _python2_pickle(path, [(r.x, r.y) for r in dat.recordings])
  raw = path.read_bytes()
  assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
  for where in (path, tmp_path):  # the file, or a folder holding it
    pk = pamap2.load(cfg(where))
    assert pk.channels == dat.channels and pk.classes == dat.classes
    for a, b in zip(pk.recordings, dat.recordings):
      assert a.subject == b.subject and a.x.dtype == np.float32 and a.y.dtype == np.int64
      np.testing.assert_array_equal(a.x, b.x)
      np.testing.assert_array_equal(a.y, b.y)
  assert [r.subject for r in pamap2.load(cfg(path, subjects=(104,))).recordings] == [104]
  with pytest.raises(DataError, match="config.data.downsample cannot apply"):
    pamap2.load(cfg(path, downsample=1))


def test_pickle_refuses_other_globals(tmp_path):
  path = tmp_path / "evil.data"
  path.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
  with pytest.raises(DataError, match=r"refusing to load the global os\.system"):
    pamap2.load(cfg(path))
  path.write_bytes(b"not a pickle at all")
  with pytest.raises(DataError, match="not a readable pickle"):
    pamap2.load(cfg(path))
  _python2_pickle(path, [(np.zeros((3, 40)), np.zeros(3, np.int64))] * 2)
  with pytest.raises(DataError, match="2 \\(X, y\\) pairs, expected 9"):
    pamap2.load(cfg(path))


def test_pickle_resaved_by_python3_with_protocol_2(tmp_path):
  """Python 3's protocol 2 writes every array's bytes as `_codecs.encode(text, 'latin1')`."""
  rng = np.random.default_rng(0)
  pairs = [(rng.normal(size=(5 + i, 40)), rng.integers(0, 12, 5 + i)) for i in range(9)]
  path = tmp_path / pamap2.PICKLE_NAME
  path.write_bytes(pickle.dumps(pairs, protocol=2))
  assert b"_codecs\nencode" in path.read_bytes()
  ds = pamap2.load(cfg(path))
  for r, (x, y) in zip(ds.recordings, pairs):
    np.testing.assert_array_equal(r.x, x.astype(np.float32))
    np.testing.assert_array_equal(r.y, y)
  path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.")
  with pytest.raises(DataError, match="refusing _codecs.encode of str with encoding 'utf-8'"):
    pamap2.load(cfg(path))


# ---- cache ------------------------------------------------------------------------------------

def test_cache_hit_invalidation_and_corruption(protocol, tmp_path, monkeypatch):
  c = cfg(protocol, subjects=(101, 103), cache_dir=str(tmp_path / "cache"))
  first = pamap2.load(c)
  calls = []
  real = pamap2_parse.parse_dat

  def no_parse(path, columns=54, parser="auto"):
    raise AssertionError(f"parsed {path} despite the cache")

  monkeypatch.setattr(pamap2_parse, "parse_dat", no_parse)
  again = pamap2.load(c)
  for a, b in zip(again.recordings, first.recordings):
    np.testing.assert_array_equal(a.x, b.x)
  # same size and mtime, one digit different: the content hash notices
  f = protocol / "Protocol" / "subject103.dat"
  text, st = f.read_text(), f.stat()
  lines = text.split("\n")
  row = next(i for i, line in enumerate(lines) if line.split()[1] == "1")  # first kept row
  toks = lines[row].split(" ")
  col = next(j for j in range(3, 54) if toks[j][0].isdigit())
  toks[col] = str((int(toks[col][0]) + 1) % 10) + toks[col][1:]  # one digit, same size
  lines[row] = " ".join(toks)
  changed = "\n".join(lines)
  monkeypatch.setattr(pamap2_parse, "parse_dat",
                      lambda p, columns=54, parser="auto": calls.append(p) or real(p))
  try:
    f.write_text(changed)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size
    new = pamap2.load(c)
    assert calls == [str(f)]
    np.testing.assert_array_equal(new.recordings[1].x, reference(f)[0])
    assert not np.array_equal(new.recordings[1].x, first.recordings[1].x)
  finally:
    f.write_text(text)
  # a corrupt entry is ignored with a warning and rebuilt
  entry = pamap2.cache_entry(c.cache_dir, str(protocol / "Protocol" / "subject101.dat"), 101,
                             pamap2._options(c))
  with open(entry, "wb") as fh:
    fh.write(b"PK\x03\x04 truncated")
  calls.clear()
  with pytest.warns(UserWarning, match="corrupt PAMAP2 cache entry"):
    rebuilt = pamap2.load(c)
  np.testing.assert_array_equal(rebuilt.recordings[0].x, first.recordings[0].x)
  assert str(protocol / "Protocol" / "subject101.dat") in calls
  assert not [p for p in os.listdir(os.path.dirname(entry)) if p.endswith(".tmp")]


# ---- configuration and errors -----------------------------------------------------------------

def test_default_config_is_the_labs():
  c = pamap2.default_config()
  assert (c.window, c.step, c.start, c.label_rule, c.normalize) == (100, 22, 22, "ends", "lab")
  assert list(c.activities) == LAB_ORDER and list(c.drop_activities) == LAB_DROP
  assert c.downsample == 3 and c.minmax and c.fill_heart_rate and not c.orientation
  assert list(c.subjects) == list(range(101, 110))


def test_errors(protocol, tmp_path):
  download = ("PAMAP2 Physical Activity Monitoring.*UCI Machine Learning Repository"
              ".*config.data.path")
  with pytest.raises(DataError, match=download):
    pamap2.load(cfg(tmp_path / "nowhere"))
  with pytest.raises(DataError, match=download):
    pamap2.load(cfg(""))
  with pytest.raises(DataError, match="one subject's file"):
    pamap2.load(cfg(protocol / "Protocol" / "subject101.dat"))
  folder = tmp_path / "some"
  folder.mkdir()
  write_dat(folder / "subject101.dat", seed=1, rows=60)
  with pytest.raises(DataError, match=r"missing PAMAP2 subject files: .*subject102\.dat"):
    pamap2.load(cfg(folder, subjects=(101, 102)))
  write_dat(folder / "subject102.dat", seed=1, rows=60, acts=(1, 15, 2))
  with pytest.raises(DataError, match=r"subject102\.dat: activity ids \[15\.0\] are neither"):
    pamap2.load(cfg(folder, subjects=(102,)))
  write_dat(folder / "subject103.dat", seed=1, rows=60, extra_lines=[" ".join(["1"] * 50)])
  with pytest.raises(DataError, match=r"subject103\.dat, line 61: 50 columns"):
    pamap2.load(cfg(folder, subjects=(103,)))
  write_dat(folder / "subject104.dat", seed=1, rows=60, extra_lines=["1 1 " + "x " * 52])
  with pytest.raises(DataError, match=r"subject104\.dat, line 61: non-numeric token 'x'"):
    pamap2.load(cfg(folder, subjects=(104,)))
  write_dat(folder / "subject105.dat", seed=1, rows=60, acts=(1,),
            extra_lines=["1 1 80 " + "inf " * 51])
  with pytest.raises(DataError, match="non-finite value left after preprocessing"):
    pamap2.load(cfg(folder, subjects=(105,), minmax=False, downsample=1))
  with pytest.raises(DataError, match="subjects are 101..109; \\[110\\]"):
    pamap2.load(cfg(folder, subjects=(110,)))
  with pytest.raises(DataError, match="downsample=0 must be an integer >= 1"):
    pamap2.load(cfg(folder, subjects=(101,), downsample=0))
