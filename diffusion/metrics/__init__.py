"""Sample-quality metrics: sliced Wasserstein distance and MMD (any dimension)."""
from diffusion.metrics.mmd import mmd
from diffusion.metrics.sliced_wasserstein import sliced_wasserstein

__all__ = ["mmd", "sliced_wasserstein"]
