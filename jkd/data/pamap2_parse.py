"""Fast exact parser for PAMAP2 `.dat` text: whitespace-separated decimals, `NaN` for missing.

`np.loadtxt` reads PAMAP2 at ~40 MB/s; the 9 Protocol files are ~1.3 GB. Three parsers, all
bit-identical to `np.loadtxt` (float64, NaN where the file says NaN); `parser="auto"` takes the
first one available:

- `c`: `jkd/data/_datparse.c`, built by `pip install` where a C compiler is (the build is optional:
  without one the install still succeeds, without this parser). One pass over the bytes, no
  per-token allocation; a common token's 16 bytes read at once with AVX-512 where the CPU has it
  (~2.2x the portable reader); decimals of up to 19 significant digits and a power of ten within
  1e±22 (all of PAMAP2's but a few) are one exact IEEE division or product (Clinger's fast path),
  the rest go to the C library's correctly rounded `strtod`. Anything but plain rows of numbers or
  NaN (another column count, a comment, `inf`, a malformed token) makes it hand the whole file to
  the numpy parser, which reads what is readable and names file and line of what is not.
- `polars` (the `pamap2` extra; `parser="auto"` uses it when installed): polars' CSV reader. Its
  speed is compiled Rust splitting the file into chunks parsed on all cores (~140 MB/s per core
  here, ~5x np.loadtxt on 2 cores); it reads one space between columns, and `NaN` and exponents
  with a correctly rounded float parser (fast-float). It is strict: a token that is no number or a
  row with too many columns fails, an empty field or a short row leaves a null. On any of these
  the file goes to the numpy parser, which reads what polars did not (tabs, repeated blanks, blank
  lines) or raises the `DataError` that names the file and line.
- `numpy`: vectorised numpy, no per-line Python:

1. Token boundaries come from one whitespace mask over ~1 MB chunks cut at line ends.
2. Each token's last 16 bytes are gathered into a right-aligned 16-byte slot (two uint64 words).
3. In those words (SWAR: bit tricks on 8 bytes at once) the leading `-` and the bytes left of the
   token are replaced by `'0'`, the one `.` is found and squeezed out, every byte is checked to be a
   digit, and the digits become an integer `m` (at most 15 digits, so `m < 2**53`).
4. The value is `±m / 10**f` (f digits after the dot). `m` and `10**f` (f <= 15) are exact doubles,
   so IEEE division rounds the exact decimal value once: bit-identical to `strtod` / `np.loadtxt`.

Tokens the fast path cannot take (`NaN`, exponents like `-6.8e-05`, more than 15 digits, garbage)
are few; `NaN` is recognised vectorised, the rest go through Python's `float` after a strict regex.
A wrong column count or a non-numeric token raises `DataError` naming the file and line.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import mmap
import os
import re

import numpy as np

from jkd.data.base import DataError

PARSERS = ("auto", "c", "numpy", "polars")

PAD = 16  # slot width in bytes; also the zero padding in front of every file buffer
CHUNK = 1 << 18  # bytes per vectorised step: temporaries stay in cache (measured best)
C_PIECE = 1 << 20  # bytes per read for the C parser
_FLOAT = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf|infinity)",
                    re.IGNORECASE)  # what strtod reads; Python's float also takes "1_0"

_U = np.uint64
_ALL = _U(0xFFFFFFFFFFFFFFFF)
_ZEROS = _U(0x3030303030303030)  # '0' in every byte: XOR maps ASCII digits to values 0..9
_DOTS = _U(0x1E1E1E1E1E1E1E1E)   # '.' ^ '0'
_C76 = _U(0x7676767676767676)    # byte + 0x76 sets the byte's top bit iff byte >= 10
_HIGH = _U(0x8080808080808080)
# divisor by (digits after the dot) + 17 * negative; 16 digits after the dot means "no dot"
_SCALE = np.concatenate([10.0 ** np.arange(16), [1.0], -(10.0 ** np.arange(16)), [-1.0]])
# _KEEP_HI[n] / _KEEP_LO[n]: bytes of the high / low word that hold the last n bytes of a slot
_KEEP_HI = np.array([(0xFFFFFFFFFFFFFFFF << (8 * max(8 - n, 0))) & 0xFFFFFFFFFFFFFFFF
                     for n in range(17)], np.uint64)
_KEEP_LO = np.array([(0xFFFFFFFFFFFFFFFF << (8 * (16 - n))) & 0xFFFFFFFFFFFFFFFF if n > 8 else 0
                     for n in range(17)], np.uint64)


def _eight_digits(w: np.ndarray) -> np.ndarray:
  """Eight digit values 0..9 per uint64 (first digit in the lowest byte) -> their integer value."""
  w = (w * _U(2561)) >> _U(8)
  w = ((w & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
  return ((w & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)


def _slots(buf: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The 16 bytes before each end as (lo, hi) uint64 words (bytes 0..7 and 8..15, little-endian).

  One gather of 16-byte items from an unaligned strided view (`.take` on such a view would copy the
  whole buffer; plain indexing does not)."""
  items = np.ndarray((buf.size - 15,), np.dtype("V16"), buffer=buf, strides=(1,))
  words = items[ends - 16].view(np.uint64).reshape(-1, 2)
  return words[:, 0], words[:, 1]


def _decimals(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, ...]:
  """Tokens buf[starts:ends] read as [+-]digits[.digits]: (mantissa uint64, digits after the dot
  (16 = no dot), negative, ok). buf needs PAD bytes before the first token. ok is False for anything
  else (NaN, exponents, junk, > 15 digits, > 16 bytes); the other outputs are then garbage.

  A token's slot is the 16 bytes ending at its end, as words lo (bytes 0..7) and hi (8..15)."""
  length = ends - starts
  first = buf.take(starts)
  neg = first == 45
  body = length - (neg | (first == 43))  # bytes after the sign
  lo, hi = _slots(buf, ends)
  lo = (lo ^ _ZEROS) & _KEEP_LO.take(body, mode="clip")
  hi = (hi ^ _ZEROS) & _KEEP_HI.take(body, mode="clip")
  # now digits are 0..9 and everything left of the body is 0; flag bytes >= 10 (the dot, or junk)
  f_lo = ((lo + _C76) | lo) & _HIGH
  f_hi = ((hi + _C76) | hi) & _HIGH
  flagged = np.bitwise_count(f_lo) + np.bitwise_count(f_hi)
  # masks of the bytes up to and including the dot (all of lo when the dot is in hi; 0 if no dot)
  upto_lo = ((f_lo << _U(1)) - _U(1)) * (flagged != 0)
  upto_hi = ((f_hi << _U(1)) - _U(1)) * (f_hi != 0)
  # the flagged byte must be the dot: XOR with '.' clears it
  dot_lo = upto_lo & ~((f_lo >> _U(7)) - _U(1))
  dot_hi = upto_hi & ~((f_hi >> _U(7)) - _U(1))
  is_dot = (((lo ^ _DOTS) & dot_lo) | ((hi ^ _DOTS) & dot_hi)) == 0
  # squeeze the dot out: bytes below it move up one byte (a 128-bit shift of the low part)
  below_lo, below_hi = lo & (upto_lo ^ dot_lo), hi & (upto_hi ^ dot_hi)
  above_lo, above_hi = ~upto_lo, ~upto_hi
  frac = (np.bitwise_count(above_lo) + np.bitwise_count(above_hi)) >> 3
  hi = (hi & above_hi) | (below_hi << _U(8)) | (below_lo >> _U(56))
  lo = (lo & above_lo) | (below_lo << _U(8))
  digits = body - (flagged > 0)
  ok = (flagged <= 1) & is_dot & (digits >= 1) & (digits <= 15) & (length <= 16)
  mant = _eight_digits(lo) * _U(100_000_000) + _eight_digits(hi)
  return mant, frac, neg, ok


def _parse_tokens(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
  """Values of plain decimal tokens, and the indices of the others (their values are garbage)."""
  mant, frac, neg, ok = _decimals(buf, starts, ends)
  return mant.astype(np.float64) / _SCALE.take(frac + 17 * neg), np.flatnonzero(~ok)


def _exponent_tokens(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray,
                                                                                     np.ndarray]:
  """Values of tokens like `-6.81079e-05`, and which were read. Exact: with mantissa m < 2**53 and
  |E| <= 22 for the value m * 10**E, both m and 10**|E| are exact doubles and one IEEE multiply or
  divide rounds the exact value once (Clinger's fast path)."""
  lo, hi = _slots(buf, ends)
  text = np.stack([lo, hi], axis=1).view(np.uint8)  # (n, 16), token right-aligned
  in_token = np.arange(16) >= (16 - (ends - starts))[:, None]
  is_e = ((text | 0x20) == ord("e")) & in_token
  e_at = ends - 16 + is_e.argmax(axis=1)
  m, m_frac, m_neg, m_ok = _decimals(buf, starts, e_at)
  e, e_frac, e_neg, e_ok = _decimals(buf, e_at + 1, ends)
  power = np.where(e_neg, -e.astype(np.int64), e.astype(np.int64)) - np.where(m_frac == 16, 0,
                                                                               m_frac)
  ok = (is_e.sum(axis=1) == 1) & m_ok & e_ok & (e_frac == 16) & (np.abs(power) <= 22)
  power = np.clip(power, -22, 22)
  value = np.where(power >= 0, m * 10.0 ** np.maximum(power, 0), m / 10.0 ** np.maximum(-power, 0))
  return np.where(m_neg, -value, value), ok


def _line_number(buf: np.ndarray, offset: int) -> int:
  return int(np.count_nonzero(buf[PAD:offset] == 10)) + 1


def _other_tokens(path: str, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  values: np.ndarray, bad: np.ndarray) -> None:
  """Fill values[bad] exactly: `NaN` and exponents vectorised, anything else through a strict
  regex and float(); a token that is no number raises DataError with its line."""
  s, e = starts[bad], ends[bad]
  _, hi = _slots(buf, e)
  is_nan = (e - s == 3) & ((hi >> _U(40)) == _U(int.from_bytes(b"NaN", "little")))
  values[bad[is_nan]] = np.nan
  bad, s, e = bad[~is_nan], s[~is_nan], e[~is_nan]
  if bad.size:
    exp_values, exp_ok = _exponent_tokens(buf, s, e)
    values[bad[exp_ok]] = exp_values[exp_ok]
    bad = bad[~exp_ok]
  for i in bad:
    token = buf[starts[i]:ends[i]].tobytes()
    if not _FLOAT.fullmatch(token):
      raise DataError(f"{path}, line {_line_number(buf, int(starts[i]))}: non-numeric token "
                      f"{token[:40].decode('latin1')!r}; a PAMAP2 .dat file holds only numbers and "
                      "NaN (re-download or fix the file)")
    values[i] = float(token)


def _parse_chunk(path: str, buf: np.ndarray, a: int, b: int, columns: int) -> np.ndarray:
  """Rows of buf[a:b] (a at a line start, b after a newline or at the end of the file)."""
  ws = buf[a:b] <= 32
  edges = np.flatnonzero(ws[1:] != ws[:-1]) + (a + 1)
  if not ws[0]:
    edges = np.concatenate([[a], edges])
  if not ws[-1]:
    edges = np.concatenate([edges, [b]])
  starts, ends = edges[0::2], edges[1::2]
  values, bad = _parse_tokens(buf, starts, ends)
  if bad.size:
    _other_tokens(path, buf, starts, ends, values, bad)
  line_ends = np.flatnonzero(buf[a:b] == 10) + a
  if b > a and buf[b - 1] != 10:
    line_ends = np.concatenate([line_ends, [b]])
  per_line = np.diff(np.searchsorted(starts, line_ends), prepend=0)
  wrong = np.flatnonzero((per_line != columns) & (per_line != 0))
  if wrong.size:
    i = int(wrong[0])
    line = _line_number(buf, int(line_ends[i]))
    raise DataError(f"{path}, line {line}: {per_line[i]} columns, expected {columns} (a PAMAP2 "
                    "Protocol .dat row has 54; is this the right file, or is it truncated?)")
  return values.reshape(-1, columns)


def read_padded(path: str) -> np.ndarray:
  """The file's bytes as uint8 with PAD zero bytes in front (slots may look behind a token)."""
  size = os.path.getsize(path)
  buf = np.zeros(PAD + size, np.uint8)
  with open(path, "rb") as f:
    got = f.readinto(memoryview(buf)[PAD:PAD + size])
  if got != size:
    raise DataError(f"{path}: read {got} of {size} bytes; is the file being written?")
  return buf


def _parse_numpy(path: str, columns: int) -> np.ndarray:
  buf = read_padded(path)
  out, a, end = [], PAD, buf.size
  while a < end:
    b = min(a + CHUNK, end)
    if b < end:
      nl = np.flatnonzero(buf[b - 1:min(b + 65536, end)] == 10)
      b = end if nl.size == 0 else b + int(nl[0])
    out.append(_parse_chunk(path, buf, a, b, columns))
    a = b
  return np.concatenate(out) if out else np.zeros((0, columns))


def _optional(name: str):
  """Module `name`, or None where it is not installed (or was not built)."""
  try:
    return importlib.import_module(name)
  except ImportError:
    return None


def polars_module():
  """polars, or None without the `pamap2` extra (imported on first use: ~0.25 s, only to parse)."""
  return _optional("polars")


def c_module():
  """The compiled parser `jkd.data._datparse`, or None where it was not built (no C compiler)."""
  return _optional("jkd.data._datparse")


def _parse_polars(pl, path: str, columns: int) -> np.ndarray | None:
  """The file through polars, or None where polars cannot read it strictly (see the docstring)."""
  try:
    frame = pl.read_csv(path, has_header=False, separator=" ", quote_char=None, glob=False,
                        schema={f"c{i}": pl.Float64 for i in range(columns)})
  except Exception:  # noqa: BLE001 -- any failure: the numpy parser says what is wrong
    return None
  if frame.width != columns or sum(frame.null_count().row(0)):
    return None
  return frame.to_numpy(order="c", writable=True)


def _parse_c(mod, path: str, columns: int) -> np.ndarray | None:
  """The file through the C parser, or None where it hands the file on (see the docstring). The
  file is read in pieces of C_PIECE bytes into one reused buffer that stays in cache."""
  # A row takes at least 2 bytes a column: room for every row; only the pages written to are ever
  # backed by memory. A private anonymous map of its own, not np.empty: numpy advises transparent
  # huge pages for large arrays, and faulting those in (with the kernel compacting memory for them)
  # made the 9-file benchmark 3.4 instead of 2.2-2.4 s on 2 threads; and not mmap's default shared
  # map, whose pages go through the kernel's shmem (first touch of 1.2 GB 0.82-0.94 s vs 0.52-0.60).
  rows_max = os.path.getsize(path) // (2 * columns) + 1
  private = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}
  memory = mmap.mmap(-1, rows_max * columns * 8, **private)
  out = np.frombuffer(memory, np.float64).reshape(rows_max, columns)
  buf = bytearray(C_PIECE)
  view, rows, kept = memoryview(buf), 0, 0
  with open(path, "rb") as f:
    while True:
      got = f.readinto(view[kept:])
      final = got == 0
      rows, used = mod.parse(view[:kept + got], columns, out, rows, final)
      if rows < 0:
        return None
      if final:
        return out[:rows]
      kept = kept + got - used
      view[:kept] = bytes(view[used:used + kept])  # the unfinished line, to the front
      if kept == len(buf):                         # a line longer than the buffer
        view.release()
        buf.extend(bytes(len(buf)))
        view = memoryview(buf)


# name: (its module or None, its parser, what to do without it); "auto" tries them in this order.
# The modules are looked up when called (lambda), so that tests can replace c_module/polars_module.
_OPTIONAL_PARSERS = {
    "c": (lambda: c_module(), _parse_c, "parser='c' needs jkd's compiled parser, built at install "
          "where a C compiler is: install gcc and reinstall jkd (pip install -e .), or use "
          "parser='auto'"),
    "polars": (lambda: polars_module(), _parse_polars,
               "parser='polars' needs polars: pip install 'jkd[pamap2]' (or parser='numpy')"),
}


def parse_dat(path: str, columns: int = 54, parser: str = "auto") -> np.ndarray:
  """(rows, columns) float64 of a whitespace-separated numeric text file, exactly as np.loadtxt.

  parser: "auto" (c when built, else polars when installed, else numpy), "c", "numpy" or
  "polars"."""
  if parser not in PARSERS:
    raise ValueError(f"parser={parser!r}; choose one of {', '.join(PARSERS)}")
  for name in {"auto": ("c", "polars"), "numpy": ()}.get(parser, (parser,)):
    module, parse, missing = _OPTIONAL_PARSERS[name]
    module = module()
    if module is None:
      if parser == name:
        raise DataError(missing)
      continue
    values = parse(module, path, columns)   # None: the numpy parser reads it or names the line
    return _parse_numpy(path, columns) if values is None else values
  return _parse_numpy(path, columns)


def parse_many(paths: list[str], columns: int = 54, workers: int = 0,
               parser: str = "auto") -> list[np.ndarray]:
  """parse_dat over several files on a thread pool (every parser releases the GIL)."""
  workers = workers or min(len(paths), os.cpu_count() or 1)
  if workers <= 1:
    return [parse_dat(p, columns, parser) for p in paths]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(lambda p: parse_dat(p, columns, parser), paths))
