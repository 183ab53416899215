"""jkd: knowledge distillation for wearable-sensor time series in JAX/Flax."""

__version__ = "0.1.0"
