"""The suite checks jkd's arithmetic against float64 numpy and PyTorch, so it runs in full float32
everywhere: on NVIDIA GPUs XLA's default would use TF32 for float32 convolutions and matmuls
(about 1e-3 relative error). jkd's own default is `train.matmul_precision='default'`; CPUs compute
full float32 either way, so this changes nothing on CI."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
