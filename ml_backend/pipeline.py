"""The one-way data flow shared by the backend, the adapter and the simulator:

    image -> model -> probabilities -> ScoredImage -> (per-image PoolStatistics, priority, regions)

``score_image`` runs the one forward pass; ``analyse_image`` does DECOMP on its outcome under the pool's
class weights (``pool_weights``). Nothing here knows Label Studio; the DECOMP settings come as any object
with the attributes of :class:`DecompOptions` (Label Studio's ``DecompSettings`` is one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ml_backend.strategies.base import Region, RegionShape, ScoredImage
from ml_backend.strategies.decomp import DecompSampler, image_priority
from ml_backend.strategies.shapes import BoxRegions, SuperpixelRegions
from ml_backend.strategies.stats import PoolStatistics

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

REGION_SHAPES = ("box", "superpixel")


class DecompOptions(Protocol):
    """DECOMP's knobs: ``k`` regions per image of ``shape`` ("box" or "superpixel") and side
    ``region_size`` pixels, centred by ``center``; ``tau`` the confidence threshold of the class
    confidence rates; ``min_pixels`` the area a class needs in an image to count as present."""

    k: int
    region_size: int
    tau: float
    shape: str
    center: str
    min_pixels: int


@dataclass(frozen=True)
class ImageAnalysis:
    """DECOMP's view of one image: its statistics (to add into the pool), its priority in [0, 1] (the
    summed weights of the classes it shows) and the regions proposed for annotation, best first."""

    statistics: PoolStatistics
    priority: float
    regions: list[Region]


def region_shape(shape: str, size: int) -> RegionShape:
    """A fresh region shape (shapes keep per-image state, so one per analysis)."""
    if shape == "box":
        return BoxRegions(size)
    if shape == "superpixel":
        return SuperpixelRegions(size)
    raise ValueError(f"region shape must be one of {REGION_SHAPES}, got {shape!r}")


def score_image(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    labelled: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    keep_pixels: bool = False,
    **predict_options: Any,
) -> ScoredImage:
    """One forward pass over ``image`` ((*spatial, channels), native dtype) as a ScoredImage.

    ``keep_pixels`` keeps the image itself for shapes that follow image edges (superpixels);
    ``predict_options`` go to :func:`ml_backend.model.inference.predict_probabilities` (device, tiling,
    ``return_features``...). Probabilities are kept only when asked for with ``return_probabilities``.
    """
    from ml_backend.model.inference import predict_probabilities

    predict_options.setdefault("return_probabilities", False)
    prediction = predict_probabilities(model, image, **predict_options)
    return ScoredImage(
        labels=prediction.labels,
        confidence=prediction.confidence,
        probabilities=prediction.probabilities,
        features=prediction.features,
        labelled=labelled,
        ignore=ignore,
        pixels=image if keep_pixels else None,
    )


def pool_weights(pool: PoolStatistics | None, num_classes: int) -> np.ndarray:
    """DECOMP class weights from the pool's statistics; uniform while there are none (or they describe
    another number of classes, e.g. after the labelling config changed)."""
    if pool is not None and pool.num_classes == num_classes:
        return pool.class_weights()
    if pool is not None:
        logger.warning(
            "pool statistics describe %d classes but the model has %d; using uniform class weights until "
            "the pool is scored again",
            pool.num_classes,
            num_classes,
        )
    return np.full(num_classes, 1.0 / num_classes)


def analyse_image(
    scored: ScoredImage,
    weights: np.ndarray,
    options: DecompOptions,
    rng: np.random.Generator | int | None = None,
) -> ImageAnalysis:
    """Statistics, priority and up to ``options.k`` DECOMP regions for one scored image."""
    statistics = PoolStatistics.from_image(scored, len(weights), options.tau)
    priority = image_priority(statistics, weights, options.min_pixels)
    sampler = DecompSampler(
        weights,
        shape=region_shape(options.shape, options.region_size),
        center=options.center,
        min_pixels=options.min_pixels,
    )
    regions = sampler.select(scored, options.k, rng, statistics=statistics)
    return ImageAnalysis(statistics, priority, regions)
