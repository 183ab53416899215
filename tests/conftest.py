"""The suite checks jkd's arithmetic against float64 numpy and PyTorch, so it runs in full float32
everywhere: on NVIDIA GPUs XLA's default would use TF32 for float32 convolutions and matmuls
(about 1e-3 relative error). jkd's own default is `train.matmul_precision='default'`; CPUs compute
full float32 either way, so this changes nothing on CI."""

import os

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

if os.environ.get("PYTEST_XDIST_WORKER"):
  # Under `pytest -n 2` two processes share the machine: on a GPU, neither may take 75 % of its
  # memory up front (XLA's default), or the second would fail.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@pytest.fixture(scope="session", autouse=True)
def _one_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the run, shared by both xdist workers and the
  `python -m jkd.main` subprocesses the tests start (they inherit the environment): a program that
  several tests compile alike compiles once. A cached executable is the one XLA would compile, so
  no number changes. It lives in pytest's base temporary directory (the run's, above each
  worker's), which pytest prunes to the last three runs."""
  base = tmp_path_factory.getbasetemp()
  path = str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla-cache")
  settings = {"JAX_COMPILATION_CACHE_DIR": path,
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.3",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  for key, value in settings.items():
    os.environ.setdefault(key, value)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))
