"""xjax: explainable neural networks in JAX/Flax."""

__version__ = "0.1.0"
