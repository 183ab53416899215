"""The suite checks jkd's arithmetic against float64 numpy and PyTorch, so it runs in full float32
everywhere: on NVIDIA GPUs XLA's default would use TF32 for float32 convolutions and matmuls
(about 1e-3 relative error). jkd's own default is `train.matmul_precision='default'`; CPUs compute
full float32 either way, so this changes nothing on CI."""

import os

import jax

jax.config.update("jax_default_matmul_precision", "highest")

if os.environ.get("PYTEST_XDIST_WORKER"):
  # Under `pytest -n 2` two processes share the machine: on a GPU, neither may take 75 % of its
  # memory up front (XLA's default), or the second would fail.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
