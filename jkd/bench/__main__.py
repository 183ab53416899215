"""Dispatch `python -m jkd.bench NAME [flags]` to `jkd.bench.NAME.main(argv)`."""

import importlib
import pkgutil
import sys

import jkd.bench


def _available() -> list[str]:
  return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(jkd.bench.__path__)
                if not m.name.startswith("_"))


def main() -> int:
  if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
    print(f"usage: python -m jkd.bench NAME [flags]; NAME one of {', '.join(_available())}")
    return 0 if len(sys.argv) >= 2 else 2
  name = sys.argv[1]
  if name not in _available():
    print(f"jkd.bench: unknown benchmark {name!r}; choose from {', '.join(_available())}",
          file=sys.stderr)
    return 2
  module = importlib.import_module(f"jkd.bench.{name.replace('-', '_')}")
  return module.main([f"jkd.bench {name}", *sys.argv[2:]]) or 0


if __name__ == "__main__":
  sys.exit(main())
