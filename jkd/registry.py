"""One idiom for everything jkd looks up by name: loss terms, model families, data sources.

A `Registry` maps names to entries. `register(name, entry)` adds one, from jkd or from the user's
own module (imported with `--import`); a name taken by another entry is refused. An entry may be a
module path ('jkd.data.pamap2'), imported on first use, so an optional dependency matters only
when its entry is used. A `pattern` (a regular expression) registers a family of names at once
(`wrn(?P<depth>\\d+)_(?P<widen>\\d+)`): `match(name)` returns the entry and the pattern's groups.
Looking up an unknown name raises the registry's error, one line listing the known names.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Iterator, Mapping


class Registry(Mapping):
  """Named entries of one kind (`kind`: how messages name them; `error`: what a bad name
  raises)."""

  def __init__(self, kind: str, error: type[Exception] = ValueError):
    self.kind, self.error = kind, error
    self._entries: dict[str, Any] = {}
    self._patterns: dict[str, re.Pattern] = {}

  def register(self, name: str, entry: Any, *, pattern: str | None = None) -> Any:
    """Add `entry` under `name` (and every name `pattern` fully matches); returns `entry`."""
    if not isinstance(name, str) or not name:
      raise self.error(f"register: a {self.kind} needs a non-empty name, got {name!r}")
    old = self._entries.get(name)
    if old is not None and old is not entry and old != entry:
      where = getattr(type(old), "__module__", "") if not isinstance(old, str) else old
      raise self.error(f"register: a {self.kind} named {name!r} exists already ({where}); "
                       "choose another name")
    self._entries[name] = entry
    if pattern is not None:
      self._patterns[name] = re.compile(pattern)
    return entry

  def match(self, name: str) -> tuple[Any, dict[str, str]]:
    """(the entry `name` selects, the groups of the pattern it matched ({} for a plain name))."""
    if name in self._entries and name not in self._patterns:
      return self._resolve(name), {}
    for key, pattern in self._patterns.items():
      m = pattern.fullmatch(name)
      if m:
        return self._resolve(key), m.groupdict()
    raise self.error(f"{name!r} is not a {self.kind}; choose one of {', '.join(self.names())}")

  def names(self) -> list[str]:
    return list(self._entries)

  def _resolve(self, name: str) -> Any:
    entry = self._entries[name]
    return importlib.import_module(entry) if isinstance(entry, str) else entry

  def __getitem__(self, name: str) -> Any:
    return self.match(name)[0]

  def __contains__(self, name: object) -> bool:
    if not isinstance(name, str):
      return False
    return (name in self._entries and name not in self._patterns) or any(
        p.fullmatch(name) for p in self._patterns.values())

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def items(self):   # noqa: D102 - entries resolved (module paths imported)
    return [(n, self._resolve(n)) for n in self._entries]

  def values(self):  # noqa: D102
    return [self._resolve(n) for n in self._entries]
