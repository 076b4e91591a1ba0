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
from ml_backend.strategies.baselines import (
    IMAGE_STRATEGIES,
    REGION_STRATEGIES,
    BadgeRegions,
    EntropyCoresetRegions,
    EntropyKMeansRegions,
    EntropyRegions,
    MeanEntropyPriority,
    RandomImagePriority,
    RandomRegions,
    build_image_strategy,
    build_region_strategy,
    pixel_entropy,
)
from ml_backend.strategies.decomp import (
    DEFAULT_REGIONS_PER_IMAGE,
    DecompImagePriority,
    DecompSampler,
    image_priority,
)
from ml_backend.strategies.seeds import BestClearSeeds
from ml_backend.strategies.shapes import BoxRegions, SuperpixelRegions
from ml_backend.strategies.stats import DEFAULT_TAU, PoolStatistics, weights_from_rates

__all__ = [
    "IMAGE_STRATEGIES",
    "REGION_STRATEGIES",
    "BadgeRegions",
    "EntropyCoresetRegions",
    "EntropyKMeansRegions",
    "EntropyRegions",
    "MeanEntropyPriority",
    "RandomImagePriority",
    "RandomRegions",
    "build_image_strategy",
    "build_region_strategy",
    "pixel_entropy",
    "DEFAULT_REGIONS_PER_IMAGE",
    "DEFAULT_TAU",
    "BestClearSeeds",
    "BoxRegions",
    "DecompImagePriority",
    "DecompSampler",
    "ImageStrategy",
    "PoolStatistics",
    "Region",
    "RegionShape",
    "RegionStrategy",
    "ScoredImage",
    "SuperpixelRegions",
    "image_priority",
    "smallest_label_dtype",
    "summarize_probabilities",
    "weights_from_rates",
]
