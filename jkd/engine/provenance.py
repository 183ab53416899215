"""What produced a results.json: code version, library versions, devices, processor, XLA flags.

`collect()` returns a JSON-able dict, recorded as `provenance` in every stage's and pipeline's
`results.json` and printed under the report and the table (`lines`):

  jkd            the package version; `git` its commit and a dirty flag when jkd runs from a git
                 checkout (absent otherwise: an installed wheel, no git binary)
  packages       jax, jaxlib, flax, optax, orbax-checkpoint, numpy versions (None if missing)
  python         the interpreter's version
  devices        jax's backend, device kind and count (jax imported only if already imported)
  processor      the CPU model (/proc/cpuinfo, else platform.processor())
  xla            the XLA_FLAGS environment variable and the jax config that changes numbers
                 (default matmul precision, x64, the CPU device count jkd chose)

Numbers depend on all of these: the same code on another processor, jaxlib or XLA flags changes
the last digits of a table (README, "Reproducing the digits").
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git(*args: str) -> str | None:
  try:
    p = subprocess.run(["git", "-C", _REPO, *args], capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return p.stdout.strip() if p.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git() -> dict[str, Any] | None:
  """{"commit", "dirty"} of the checkout jkd is imported from, or None outside a git checkout."""
  if not os.path.exists(os.path.join(_REPO, ".git")):
    return None
  commit = _git("rev-parse", "HEAD")
  if commit is None:
    return None
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": bool(status) if status is not None else None}


@functools.lru_cache(maxsize=1)
def processor() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith(("model name", "hardware", "cpu model")):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def _devices() -> dict[str, Any] | None:
  if "jax" not in sys.modules:   # never start a backend just to describe it
    return None
  import jax   # noqa: PLC0415
  try:
    devs = jax.devices()
  except RuntimeError:
    return None
  return {"backend": jax.default_backend(), "kind": devs[0].device_kind if devs else None,
          "count": len(devs), "processes": jax.process_count()}


def _xla() -> dict[str, Any]:
  out: dict[str, Any] = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
  if "jax" in sys.modules:
    import jax   # noqa: PLC0415
    for key in ("jax_default_matmul_precision", "jax_enable_x64", "jax_num_cpu_devices"):
      try:
        v = getattr(jax.config, key)
      except AttributeError:
        continue
      out[key] = v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
  return out


def collect() -> dict[str, Any]:
  out: dict[str, Any] = {"jkd": _version("jkd")}
  g = git()
  if g is not None:
    out["git"] = g
  out["packages"] = {p: _version(p) for p in PACKAGES}
  out["python"] = platform.python_version()
  out["devices"] = _devices()
  out["processor"] = processor()
  out["xla"] = _xla()
  return out


def lines(p: dict[str, Any] | None) -> list[str]:
  """A provenance dict as markdown bullet lines (empty for None: results written before it)."""
  if not p:
    return []
  code = f"jkd {p.get('jkd') or '?'}"
  if p.get("git"):
    g = p["git"]
    code += f", git {g['commit'][:12]}{' (dirty: uncommitted changes)' if g.get('dirty') else ''}"
  pk = ", ".join(f"{k} {v}" for k, v in (p.get("packages") or {}).items() if v)
  d = p.get("devices") or {}
  dev = f"{d.get('count')} × {d.get('kind')} ({d.get('backend')})" if d else "not recorded"
  x = p.get("xla") or {}
  xla = "; ".join(f"{k}={v}" for k, v in x.items() if v not in ("", None)) or "none set"
  return [f"- code: {code}; Python {p.get('python')}", f"- packages: {pk}",
          f"- devices: {dev}; processor: {p.get('processor')}", f"- XLA: {xla}"]


__all__ = ["collect", "lines", "git", "processor", "PACKAGES"]
