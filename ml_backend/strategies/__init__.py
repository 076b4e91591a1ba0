"""Selection strategies: DECOMP and the baselines, pure numpy/torch, N-dimensional, no Label Studio import."""

from ml_backend.strategies.base import (
    ImageStrategy,
    Region,
    RegionShape,
    RegionStrategy,
    ScoredImage,
    smallest_label_dtype,
    summarize_probabilities,
)
from ml_backend.strategies.shapes import BoxRegions, SuperpixelRegions

__all__ = [
    "BoxRegions",
    "ImageStrategy",
    "Region",
    "RegionShape",
    "RegionStrategy",
    "ScoredImage",
    "SuperpixelRegions",
    "smallest_label_dtype",
    "summarize_probabilities",
]
