"""DECOMP (Decomposition Sampling, WACV 2026): image priority and class-wise region sampling.

The image is decomposed into class components by its pseudo-labels. Classes the model is rarely
confident about get high weights (``stats.PoolStatistics.class_weights``); an image is worth the summed
weights of the classes it shows, and inside an image each region is drawn for a class picked i.i.d. by
weight, placed on that class's most confident pixel whose region is still free (the authors' rule) or on
a uniformly random one. Paper: arXiv:2512.07606; reference code: github.com/JingnaQiu/DECOMP.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np

from ml_backend.strategies.base import Region, RegionShape, ScoredImage, check_region_count
from ml_backend.strategies.seeds import BestClearSeeds
from ml_backend.strategies.shapes import BoxRegions
from ml_backend.strategies.stats import DEFAULT_RATE_DECIMALS, PoolStatistics

DEFAULT_REGIONS_PER_IMAGE = 15
CENTERS = ("max_confidence", "uniform")


def _checked_weights(weights: Iterable[float] | np.ndarray) -> np.ndarray:
    checked = np.asarray(weights, dtype=np.float64)
    if checked.ndim != 1 or checked.size == 0:
        raise ValueError(f"class weights must be a non-empty 1-D array, got shape {checked.shape}")
    if not np.all(np.isfinite(checked)) or np.any(checked < 0):
        raise ValueError(f"class weights must be finite and >= 0, got {checked.tolist()}")
    return checked


def _checked_min_pixels(min_pixels: int) -> int:
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
    return min_pixels


def image_priority(image_statistics: PoolStatistics, weights: np.ndarray, min_pixels: int = 1) -> float:
    """V(I): the summed weights of the classes present in the image (predicted on at least ``min_pixels``
    of its unlabelled pixels). Presence is binary, so more pixels of the same classes add nothing."""
    weights = _checked_weights(weights)
    if weights.size != image_statistics.num_classes:
        raise ValueError(
            f"{weights.size} class weights for image statistics of {image_statistics.num_classes} classes"
        )
    return float(weights[image_statistics.present(min_pixels)].sum())


class _ClassWeighted:
    """What DECOMP's image priority and region sampler share: class ``weights``, classes in ``exclude``
    that never count (an ignore class), and ``min_pixels``, the area a class needs in an image to count
    as present."""

    def __init__(self, weights: np.ndarray, min_pixels: int = 1, exclude: Iterable[int] = ()) -> None:
        self.weights = _checked_weights(weights)
        self.min_pixels = _checked_min_pixels(min_pixels)
        self.exclude = tuple(int(c) for c in exclude)
        if any(not 0 <= c < self.weights.size for c in self.exclude):
            raise ValueError(f"excluded classes {self.exclude} must lie in 0 .. {self.weights.size - 1}")
        self._counted = np.ones(self.weights.size, dtype=bool)
        self._counted[list(self.exclude)] = False

    @classmethod
    def from_statistics(
        cls: type[_Weighted],
        pool: PoolStatistics,
        *,
        decimals: int | None = DEFAULT_RATE_DECIMALS,
        exclude: Iterable[int] = (),
        **options: Any,
    ) -> _Weighted:
        """Weighted by the pool's class confidence rates (``PoolStatistics.class_weights``); ``options``
        go to the constructor."""
        exclude = tuple(exclude)
        return cls(pool.class_weights(decimals, exclude), exclude=exclude, **options)

    def _checked_statistics(self, image: ScoredImage, statistics: PoolStatistics | None) -> PoolStatistics:
        if statistics is None:
            return PoolStatistics.from_image(image, self.weights.size)
        if statistics.num_classes != self.weights.size:
            raise ValueError(
                f"image statistics of {statistics.num_classes} classes for {type(self).__name__} of "
                f"{self.weights.size} class weights"
            )
        return statistics


_Weighted = TypeVar("_Weighted", bound=_ClassWeighted)


class DecompImagePriority(_ClassWeighted):
    """ImageStrategy: rank images by ``image_priority`` under the pool's class weights; classes in
    ``exclude`` add nothing."""

    name = "decomp"

    def priority(self, image: ScoredImage, *, statistics: PoolStatistics | None = None) -> float:
        """``statistics`` may pass the image's own ``PoolStatistics.from_image`` when the caller already
        has it, saving a pass over the image."""
        statistics = self._checked_statistics(image, statistics)
        return image_priority(statistics, np.where(self._counted, self.weights, 0.0), self.min_pixels)


class _ClassLottery:
    """Draws classes i.i.d. by weight. An exhausted class is dropped and the rest renormalised; once
    none is left, the draw falls back (once) to uniform over the fallback classes not yet exhausted."""

    def __init__(self, weights: np.ndarray, eligible: np.ndarray, fallback: np.ndarray) -> None:
        self._weights = weights
        self._fallback = fallback
        self._exhausted = np.zeros(weights.size, dtype=bool)
        self._in_fallback = False
        self._classes = np.flatnonzero(eligible)
        if self._classes.size == 0:
            self._enter_fallback()

    def _enter_fallback(self) -> None:
        self._in_fallback = True
        self._classes = np.flatnonzero(self._fallback & ~self._exhausted)

    def draw(self, rng: np.random.Generator) -> int | None:
        if self._classes.size == 0:
            return None
        if self._in_fallback:
            return int(self._classes[rng.integers(self._classes.size)])
        odds = self._weights[self._classes]
        return int(self._classes[rng.choice(self._classes.size, p=odds / odds.sum())])

    def drop(self, class_index: int) -> None:
        self._exhausted[class_index] = True
        self._classes = self._classes[self._classes != class_index]
        if self._classes.size == 0 and not self._in_fallback:
            self._enter_fallback()


class _UniformSeeds:
    """A class's clear seeds, served uniformly at random among those still clear.

    Rejection sampling over a list of the class's seeds, built when the class is first drawn: a draw
    that lands on a blocked seed compacts the list once, after which every draw lands on a clear one,
    so a pick costs O(1) until regions start to crowd the class. ``clear`` is read live, as the regions
    chosen block it.
    """

    def __init__(self, labels: np.ndarray, clear: np.ndarray, rng: np.random.Generator) -> None:
        self._labels = labels
        self._clear = clear.reshape(-1)
        self._rng = rng
        self._seeds: dict[int, np.ndarray] = {}

    def next_clear(self, class_index: int) -> tuple[int, ...] | None:
        if class_index not in self._seeds:
            self._seeds[class_index] = np.flatnonzero((self._labels.reshape(-1) == class_index) & self._clear)
        seeds = self._seeds[class_index]
        while seeds.size:
            seed = seeds[self._rng.integers(seeds.size)]
            if self._clear[seed]:
                return tuple(int(i) for i in np.unravel_index(seed, self._labels.shape))
            seeds = self._seeds[class_index] = seeds[self._clear[seeds]]
        return None


class DecompSampler(_ClassWeighted):
    """RegionStrategy: DECOMP class-wise region sampling inside one image.

    Each of up to ``k`` draws picks a class with probability proportional to its weight among the
    classes present in the image (at least ``min_pixels`` unlabelled pixels) with weight > 0, then
    places a region (``shape``, default ``BoxRegions()``) on that class's most confident seed
    (``center="max_confidence"``) or a uniformly random one (``center="uniform"``) whose region stays
    clear of labelled pixels, ignored pixels and the regions already chosen. A class with no clear seed
    left is dropped; when none is left, classes are drawn uniformly among those predicted anywhere on
    the available pixels and not in ``exclude``; the draw stops when no class has room. Each region
    records the class drawn, its seed, the confidence there, and the class weight as its score.

    ``select`` prepares ``shape`` for the image at hand, so one sampler must not serve two threads at
    once; build one per thread (they are cheap).
    """

    name = "decomp"

    def __init__(
        self,
        weights: np.ndarray,
        shape: RegionShape | None = None,
        center: str = "max_confidence",
        min_pixels: int = 1,
        exclude: Iterable[int] = (),
    ) -> None:
        super().__init__(weights, min_pixels, exclude)
        if center not in CENTERS:
            raise ValueError(f"center must be one of {CENTERS}, got {center!r}")
        self.shape = shape if shape is not None else BoxRegions()
        self.center = center

    def select(
        self,
        image: ScoredImage,
        k: int = DEFAULT_REGIONS_PER_IMAGE,
        rng: np.random.Generator | int | None = None,
        *,
        statistics: PoolStatistics | None = None,
    ) -> list[Region]:
        """Up to ``k`` disjoint regions. ``statistics`` may pass the image's own
        ``PoolStatistics.from_image`` when the caller already has it, saving a pass over the image."""
        check_region_count(k)
        rng = np.random.default_rng(rng)
        if k == 0:
            return []
        statistics = self._checked_statistics(image, statistics)
        lottery = _ClassLottery(
            self.weights,
            eligible=statistics.present(self.min_pixels) & (self.weights > 0) & self._counted,
            fallback=(statistics.predicted > 0) & self._counted,
        )
        self.shape.prepare(image)
        # Blocking writes into ``clear`` while the pickers read it through views: it must be contiguous.
        clear = np.ascontiguousarray(self.shape.clear_seeds(~image.available()))
        seeds = (
            BestClearSeeds(image.confidence, clear, groups=image.labels, num_groups=self.weights.size)
            if self.center == "max_confidence"
            else _UniformSeeds(image.labels, clear, rng)
        )
        regions: list[Region] = []
        while len(regions) < k:
            class_index = lottery.draw(rng)
            if class_index is None:
                break
            seed = seeds.next_clear(class_index)
            if seed is None:
                lottery.drop(class_index)
                continue
            bbox, mask = self.shape.region_at(seed)
            self.shape.block(clear, bbox, mask)
            regions.append(
                Region(
                    mask=mask,
                    bbox=bbox,
                    seed=seed,
                    class_index=class_index,
                    confidence=float(image.confidence[seed]),
                    score=float(self.weights[class_index]),
                )
            )
        return regions
