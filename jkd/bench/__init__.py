"""Benchmarks: `python -m jkd.bench <name> [--flags]`, each printing one JSON line of numbers.

Each benchmark lives in `jkd/bench/<name with - as _>.py` and exposes `main(argv)`.
"""
